"""DPO throughput: TRL's DPOTrainer the way the alignment-handbook calls it, against zephyr's recipe defaults,
on the same model, data and steps. Each variant runs in its own process (so peak memory is its own).

    python benchmarks/dpo_throughput.py [--steps 12] [--hidden 256] [--layers 4] [--pairs 160]

Lines printed:
  baseline      TRL DPOTrainer, frozen reference copy run at every step, random batches (handbook defaults)
  zephyr        zephyr defaults: reference log-probs precomputed once and cached on disk (warm cache), same
                batches as the baseline; per-step losses must equal the baseline's within 1e-4
  zephyr-cold   the same, first run: the one-off reference pass is counted in its time
  +group-length zephyr defaults plus length-grouped batches (reorders the data, so its losses differ: its
                own line, not part of the headline ratio)
tokens/s counts real (non-padding) tokens of chosen and rejected sequences.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/synthetic.py
VARIANTS = ("baseline", "zephyr-cold", "zephyr", "group-length")


def make_data(folder: Path, pairs: int, seed: int = 0) -> Path:
    """Preference rows with UltraFeedback's long tail of lengths (benchmarks/synthetic.py)."""
    import synthetic

    return synthetic.write_jsonl(synthetic.preference_rows(pairs, seed), folder / "prefs.jsonl")


def make_model(folder: Path, hidden: int, layers: int) -> Path:
    from zephyr.embedded.build import build_tiny_model

    build_tiny_model(folder, hidden_size=hidden, num_layers=layers)
    return folder / "model"


def run_variant(variant: str, model: Path, data: Path, out: Path, steps: int) -> dict:
    """Train `steps` steps; return timing, real tokens, per-step losses. Runs inside the variant's process."""
    import torch
    from trl import DPOConfig, DPOTrainer

    from zephyr.configs import DataArguments, ModelArguments, ZephyrDPOConfig
    from zephyr.stages import dpo

    torch.manual_seed(0)
    common = {"output_dir": str(out), "per_device_train_batch_size": 8, "max_steps": steps, "max_length": 1024,
              "learning_rate": 1e-5, "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no",
              "report_to": "none", "gradient_checkpointing": False, "seed": 0, "bf16": False,
              "dataloader_pin_memory": False}
    model_args = ModelArguments(model_name_or_path=str(model), dtype="float32")
    data_args = DataArguments(dataset_name=str(data), long_rows="truncate")
    start = time.perf_counter()
    if variant == "baseline":  # the handbook's call: a reference copy, TRL's defaults
        from transformers import AutoModelForCausalLM

        from zephyr.data import prepare_datasets
        from zephyr.modeling import load_tokenizer

        tokenizer = load_tokenizer(model_args)
        train, _, _ = prepare_datasets(data_args, "preference", tokenizer, 1024)
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=DPOConfig(**common),
                             ref_model=AutoModelForCausalLM.from_pretrained(model), train_dataset=train,
                             processing_class=tokenizer)
    else:
        extra = {"train_sampling_strategy": "group_by_length"} if variant == "group-length" else {}
        trainer, _, _ = dpo.build_trainer(model_args, data_args, ZephyrDPOConfig(**common, **extra))
    import synthetic

    tokens = synthetic.count_real_tokens(trainer)
    setup = time.perf_counter() - start
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"variant": variant, "train_seconds": seconds, "setup_seconds": setup, "real_tokens": sum(tokens[:steps]),
            "samples": steps * 8, "losses": losses,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=160)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process: one variant
        work = Path(args.workdir)
        result = run_variant(args.variant, work / "tiny" / "model", work / "prefs.jsonl", work / args.variant,
                             args.steps)
        print("RESULT " + json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="zephyr-bench-"))
    env = {**os.environ, "ZEPHYR_CACHE": str(work / "cache"), "TQDM_DISABLE": "1"}
    make_model(work / "tiny", args.hidden, args.layers)
    make_data(work, args.pairs)
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--workdir", str(work), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{variant} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(line[7:])

    base = results["baseline"]
    print(f"\nDPO throughput: {args.steps} steps x 8 pairs, Mistral {args.hidden}x{args.layers}, fp32, CPU "
          f"{os.cpu_count()} cores (work dir {work})")
    print(f"{'variant':<14}{'tokens/s':>10}{'samples/s':>11}{'peak MB':>9}{'vs base':>9}  loss check")
    for name, r in results.items():
        seconds = r["train_seconds"] + (r["setup_seconds"] if name == "zephyr-cold" else 0)
        tps, sps = r["real_tokens"] / seconds, r["samples"] / seconds
        ratio = tps / (base["real_tokens"] / base["train_seconds"])
        if name == "group-length":
            check = "reordered data: own curve " + " ".join(f"{x:.4f}" for x in r["losses"][:4]) + " ..."
        else:
            worst = max(abs(a - b) for a, b in zip(r["losses"], base["losses"], strict=True))
            check = f"max |loss - baseline| = {worst:.2e} ({'OK' if worst < 1e-4 else 'DIFFERENT'})"
        print(f"{name:<14}{tps:>10.0f}{sps:>11.2f}{r['peak_rss_mb']:>9.0f}{ratio:>8.2f}x  {check}")
    headline = (results["zephyr"]["real_tokens"] / results["zephyr"]["train_seconds"]) / (
        base["real_tokens"] / base["train_seconds"])
    print(f"\nheadline (zephyr defaults, warm reference cache, same batches): {headline:.2f}x the baseline's tokens/s")


if __name__ == "__main__":
    main()
