"""dSFT data preparation: zephyr's (load, schema conversion, validation, length check, TRL's tokenization) against
TRL's SFTTrainer tokenizing the same rows itself, at dataset_num_proc 1 and 2.

    python benchmarks/data_prep.py [--rows 20000] [--tokenizer mistral|bpe] [--procs 1 2] [--max-length 2048]
                                   [--repeat 1] [--out DIR] [--json FILE]

The rows: N UltraChat-like conversations written to one JSON Lines file (`messages` + `prompt_id`): 1-5
exchanges, a system message in one row of ten, log-normal word counts (user turns median ~45 words, assistant
turns median ~190, capped at 1500), words drawn from zephyr's embedded vocabulary. With Mistral's real 32k
tokenizer (default) a conversation averages ~1.2k tokens, about UltraChat's.

What is timed, each side its own process, started cold (a fresh HF_DATASETS_CACHE and ZEPHYR_CACHE, so nothing
tokenized before is reused):
  trl     the rows loaded with `datasets.load_dataset("json")` (not timed), then, timed: the tokenizer and a tiny
          model loaded and `SFTTrainer(...)` built on the rows: TRL converts nothing, tokenizes every row with the
          chat template (assistant masks on), builds labels, truncates to max_length.
  zephyr  timed from the start: `zephyr.stages.sft.build_trainer` (what `zephyr sft` runs before training): the
          tokenizer loaded, the file loaded, every row converted and validated, the eval split, the length check
          (long_rows: truncate, as TRL does), the prepared rows saved to the cache, the tiny model loaded and
          `SFTTrainer(...)` built on them. Its own columns split this into `prepare_datasets` and the rest.
Both use the same tokenizer, chat template (zephyr's, with {% generation %} markers), assistant_only_loss,
max_length and dataset_num_proc. The tiny model (1 layer, 32 wide) loads in milliseconds; loading it counts on
both sides, and so does loading the tokenizer.

Check: both sides must train on the same rows, token for token: the multiset of (input_ids, labels) rows is hashed
on each side (zephyr shuffles its rows, TRL keeps the file order) and the table says whether they agree.

Columns: procs (dataset_num_proc), trl s, zephyr s, of which prepare s (`prepare_datasets`) and rest s (the
tokenizer, the model and `SFTTrainer(...)`: TRL's labels and truncation), zephyr/TRL (zephyr s / trl s), same rows. The last line:
`data prep: zephyr/TRL = X.XXx (1 proc), Y.YYx (2 procs)`.
On a busy machine the absolute seconds mean little; the sides run one after the other, so both see about the
same load, and with --repeat N each side runs N times in ABBA order and the medians are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_WORDS = 1500


def conversations(n: int, seed: int = 0) -> list[dict]:
    """UltraChat-like rows: 1-5 exchanges, log-normal lengths (user ~45 words, assistant ~190, median)."""
    from zephyr.embedded.tasks import WORDS

    rng = random.Random(seed)

    def text(median: float, sigma: float) -> str:
        words = max(2, min(MAX_WORDS, int(rng.lognormvariate(math.log(median), sigma))))
        return " ".join(rng.choice(WORDS) for _ in range(words))

    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": text(15, 0.5)}] if i % 10 == 0 else []
        for _ in range(rng.randint(1, 5)):
            messages.append({"role": "user", "content": text(45, 0.9)})
            messages.append({"role": "assistant", "content": text(190, 0.7)})
        rows.append({"messages": messages, "prompt_id": f"{i:08x}"})
    return rows


def rows_digest(ds) -> dict:
    """A hash of the multiset of (input_ids, labels) rows, and their count and tokens."""
    digests = sorted(hashlib.sha1(json.dumps([ids, labels]).encode()).hexdigest()
                     for ids, labels in zip(ds["input_ids"], ds["labels"], strict=True))
    return {"rows": len(digests), "tokens": sum(len(ids) for ids in ds["input_ids"]),
            "digest": hashlib.sha1("".join(digests).encode()).hexdigest()[:16]}


# -- the sides: each runs in its own process (`--side`) ---------------------------------------------------------

def trl_side(work: Path, procs: int, max_length: int) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = load_dataset("json", data_files=str(work / "chats.jsonl"), split="train")
    args = SFTConfig(output_dir=str(work / "trl-out"), max_length=max_length, assistant_only_loss=True,
                     dataset_num_proc=procs, report_to="none", bf16=False, use_cpu=True)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **rows_digest(trainer.train_dataset)}


def zephyr_side(work: Path, procs: int, max_length: int) -> dict:
    from zephyr.recipe import build_configs
    from zephyr.stages import sft

    values = {"model_name_or_path": str(work / "model"), "dtype": "float32",
              "dataset_name": str(work / "chats.jsonl"), "dataset_test_split": None, "long_rows": "truncate",
              "max_length": max_length, "dataset_num_proc": procs, "output_dir": str(work / "zephyr-out"),
              "report_to": "none", "resume": False}
    configs = build_configs(values, sft.CONFIG_CLASSES)
    prepare = sft.prepare_datasets
    spent = {}

    def timed_prepare(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return prepare(*args, **kwargs)
        finally:
            spent["prepare"] = time.perf_counter() - begin

    sft.prepare_datasets = timed_prepare  # only to split the time in two; the code path is unchanged
    start = time.perf_counter()
    trainer, _, _ = sft.build_trainer(*configs)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "prepare": spent["prepare"], **rows_digest(trainer.train_dataset)}


SIDES = {"trl": trl_side, "zephyr": zephyr_side}


def median_run(runs: list[dict]) -> dict:
    """The run with the median time (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


def run_side(name: str, work: Path, procs: int, max_length: int) -> dict:
    cold = Path(tempfile.mkdtemp(prefix=f"{name}-caches-", dir=work))  # nothing tokenized before is reused
    env = {**os.environ, "HF_DATASETS_CACHE": str(cold / "datasets"), "ZEPHYR_CACHE": str(cold / "zephyr"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = work / f"{name}-{procs}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--side", name, "--work", str(work),
               "--procs", str(procs), "--max-length", str(max_length), "--json", str(result)]
    log = work / f"{name}-{procs}.log"
    with open(log, "w") as sink:
        proc = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"{name} (dataset_num_proc {procs}) failed; the end of {log}:\n{log.read_text()[-4000:]}")
    shutil.rmtree(cold, ignore_errors=True)
    out = json.loads(result.read_text())
    print(f"  {name:6s} dataset_num_proc={procs}: {out['seconds']:.1f} s ({out['rows']} rows, {out['tokens']} tokens)",
          flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--tokenizer", choices=["mistral", "bpe"], default="mistral")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="dataset_num_proc values to time")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=1, help="runs per side and process count (median reported)")
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.side:  # one side, in its own process
        result = SIDES[opts.side](opts.work, opts.procs[0], opts.max_length)
        opts.json.write_text(json.dumps(result))
        return

    work = opts.out or Path(tempfile.mkdtemp(prefix="zephyr-data-prep-"))
    work.mkdir(parents=True, exist_ok=True)
    from zephyr.embedded.build import build_tiny_model

    build_tiny_model(work / "tiny", tokenizer=opts.tokenizer, hidden_size=32, num_layers=1)
    shutil.rmtree(work / "model", ignore_errors=True)
    shutil.move(str(work / "tiny" / "model"), str(work / "model"))
    with open(work / "chats.jsonl", "w") as f:
        for row in conversations(opts.rows):
            f.write(json.dumps(row) + "\n")
    print(f"{opts.rows} conversations, {opts.tokenizer} tokenizer, max_length {opts.max_length}; work in {work}",
          flush=True)

    results = []
    for procs in opts.procs:
        runs: dict[str, list[dict]] = {"trl": [], "zephyr": []}
        for repeat in range(opts.repeat):  # ABBA: a drift in the machine's load falls on both sides alike
            for name in ("trl", "zephyr") if repeat % 2 == 0 else ("zephyr", "trl"):
                runs[name].append(run_side(name, work, procs, opts.max_length))
        trl, zephyr = median_run(runs["trl"]), median_run(runs["zephyr"])
        results.append({"procs": procs, "trl": trl, "zephyr": zephyr, "ratio": zephyr["seconds"] / trl["seconds"],
                        "same_rows": len({r["digest"] for r in runs["trl"] + runs["zephyr"]}) == 1,
                        "runs": runs})
    print()
    print(f"median of {opts.repeat} run(s) per side" if opts.repeat > 1 else "one run per side")
    print("| procs | trl s | zephyr s | prepare s | rest s | zephyr/TRL | same rows |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        z = r["zephyr"]
        print(f"| {r['procs']} | {r['trl']['seconds']:.1f} | {z['seconds']:.1f} | {z['prepare']:.1f} | "
              f"{z['seconds'] - z['prepare']:.1f} | {r['ratio']:.2f}x | {'yes' if r['same_rows'] else 'NO'} |")
    if opts.json:
        opts.json.write_text(json.dumps({"rows": opts.rows, "tokenizer": opts.tokenizer, "results": results}, indent=2))
    if not opts.out:
        shutil.rmtree(work, ignore_errors=True)
    parts = [f"{r['ratio']:.2f}x ({r['procs']} proc{'s' if r['procs'] > 1 else ''})" for r in results]
    print(f"data prep: zephyr/TRL = {', '.join(parts)}")


if __name__ == "__main__":
    main()
