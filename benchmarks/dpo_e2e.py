"""End-to-end dDPO: one epoch as whole processes, start to saved model, cold. TRL's DPOTrainer the way the
alignment-handbook calls it, against `zephyr dpo` with its defaults, on the same model, data, batches and steps.

    python benchmarks/dpo_e2e.py [--pairs 128] [--hidden 256] [--layers 4] [--tokenizer mistral|bpe]
                                 [--batch 8] [--max-length 1024] [--out DIR] [--json FILE]
                                 [--sides baseline,zephyr[,no-share,head-all,trl-kernel,unpacked,no-ckpt]]
                                 [--sweep]

Defaults: 128 UltraFeedback-like pairs (benchmarks/synthetic.py: log-normal lengths, prompts ~70 words, answers
~150, capped at 350 words), a random-init 256-wide 4-layer Mistral with Mistral-7B's real 32k tokenizer, batch 8,
max_length 1024, fp32, on every core. On an idle 2-core machine both sides together should take ~13 minutes
(estimated from 717 s + 524 s measured for 256 pairs, hence 128 by default); on a busy machine the timings mean
nothing. A tiny smoke run (~1 minute; tests/test_benchmarks_e2e.py runs it):

    python benchmarks/dpo_e2e.py --pairs 8 --batch 2 --hidden 32 --layers 1 --tokenizer bpe

Keep --max-length well above the longest prompt (1024 is): zephyr drops a pair whose prompt alone fills max_length,
TRL keeps it, and the two sides would then train on different batches (the loss check says so).

What is timed: each side is its own process, timed by this script from the moment it starts it to the moment it
exits, with that process's peak RSS (os.wait4). Everything between counts: the imports, loading and tokenizing the
data, loading the model(s), the reference pass, one epoch of training, saving the model. Each side starts cold: a
fresh work folder, an empty datasets cache (HF_DATASETS_CACHE) and an empty zephyr cache (ZEPHYR_CACHE), so no
tokenized data and no reference log-probs are reused. Building the model and writing the data happen before,
uncounted (both sides read the same files).

Lines of the table (SIDES below; add a line by adding a Side):
  baseline   `python benchmarks/dpo_e2e.py --side baseline`: TRL's DPOTrainer the handbook's way: the dataset
             loaded and shuffled (as the handbook's mixer does), conversational prompt/chosen/rejected rows
             tokenized by TRL, a frozen reference copy passed as ref_model and run at every step (TRL's default:
             precompute_ref_log_probs off), padded batches; then save_model.
  zephyr     `python -m zephyr.cli dpo RECIPE`: zephyr's defaults (reference log-probs precomputed once and cached
             on disk; packed forward, each pair's prompt computed once, the LM head only on answer positions
             and, on CPU, zephyr's log-prob kernel), from a recipe this script writes. Like every `zephyr`
             process it leaves out the optional libraries its run does not use (zephyr/optional_imports.py:
             ~2.8 CPU-s of imports at start) and ends without the interpreter teardown (zephyr/launch.py:
             ~1 CPU-s); the baseline imports them as TRL and peft do, and tears down as Python does. The
             recorded results (results_dpo_e2e_cpu*.json, commit c9adcea) predate both.
  With --sides, lines that each switch one lever (see SIDES): no-share (share_prompt false), head-all
  (lm_head_labels_only false), trl-kernel (cpu_log_prob_kernel false), unpacked (packed_forward false), no-ckpt (gradient_checkpointing false: not a
  zephyr default, it trades activation memory for time). Each adds 3-5 minutes at the default sizes.

Both sides use the same hyperparameters (HYPER: the handbook's cosine schedule with 10% warmup, beta 0.1 and
lr 1e-5 so that the loss leaves ln 2 within the epoch, TRL's default activation checkpointing) and see the same
batches in the same order: zephyr shuffles the training rows once with the data seed (0) when it loads them, the
baseline shuffles them the same way (`Dataset.shuffle(seed=0)`), and both read them in order
(`train_sampling_strategy: sequential`). Their per-step losses must then agree within 1e-4 (fp32).

Columns:
  wall s        seconds from process start to exit
  peak RSS GB   the process's peak resident memory (10^9 bytes)
  steps         optimizer steps logged (one per batch)
  max|dloss|    largest per-step |loss - baseline loss| (fp32: must be below 1e-4)
  real tokens   non-padding tokens of the chosen and rejected sequences trained on (TRL's `num_tokens`)
  GFLOP         model FLOPs: 6*N*T for the policy (forward + backward) + 2*N*T for the reference (forward), with
                N the parameters that do a matmul per token (all but the input embedding; the LM head counts) and
                T the real tokens. Activation-checkpointing recomputation and attention scores are left out.
  GFLOP/s       GFLOP / wall s
  of floor      floor / wall s, where floor = GFLOP / the fp32 matmul rate measured here at the start (this
                machine, torch threads = cores) on the model's own shapes: [4096 x hidden] @ [hidden x 3*hidden]
                for the layers and [4096 x hidden] @ [hidden x vocab] for the LM head, weighted by their
                parameters. 100% would be a run doing nothing but those matmuls at that rate.
The last line: `headline: N.NNx end-to-end vs TRL (handbook way)`, baseline wall seconds / zephyr wall seconds.

The sweep line (`--sweep`, e.g. `python benchmarks/dpo_e2e.py --sweep --pairs 32`): 6 dDPO trials, beta 0.05/0.1/0.2
x learning rate 5e-6/1e-5 (SWEEP). The baseline is 6 runs of the baseline side one after another, sharing one
datasets cache as they would on a user's machine; zephyr is one `zephyr sweep` process (grid, one trial at a
time), whose trials share the prepared data and the reference log-probs. Each trial's per-step losses are compared
with its baseline run's. Last line: `sweep: N.NNx the baseline's time for 6 dDPO trials (target: at most 0.30x)`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/synthetic.py
REPO = Path(__file__).resolve().parent.parent
MAX_WORDS = 350  # longest prompt or answer, in words: a pair stays under 1024 tokens with the 32k tokenizer
DATA_SEED = 0  # zephyr shuffles a dataset_name's rows with seed 0 when it loads them; the baseline does the same
LOSS_TOLERANCE = 1e-4  # fp32
MATMUL_TOKENS = 4096  # rows of the measured matmuls: about one batch of 8 pairs at UltraFeedback lengths


SWEEP = {"beta": [0.05, 0.1, 0.2], "learning_rate": [5e-6, 1e-5]}  # --sweep: 6 trials, as a grid


def hyperparameters(batch: int, max_length: int, beta: float = 0.1, learning_rate: float = 1e-5) -> dict:
    """What both sides are given (TRL DPOConfig keys); anything else is each side's own default."""
    return {"per_device_train_batch_size": batch, "max_length": max_length, "num_train_epochs": 1,
            "learning_rate": learning_rate, "beta": beta, "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "seed": 0,
            "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no", "report_to": "none",
            "train_sampling_strategy": "sequential"}


# -- the baseline side: runs in its own process (`--side baseline`) ---------------------------------------------

def baseline_side(work: Path, batch: int, max_length: int, beta: float, learning_rate: float, name: str) -> None:
    """TRL's DPOTrainer as the alignment-handbook's dpo script calls it; writes <name>/result.json."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    model_dir, out = work / "model", work / name
    args = DPOConfig(output_dir=str(out), bf16=False, **hyperparameters(batch, max_length, beta, learning_rate))
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train = load_dataset("json", data_files=str(work / "prefs.jsonl"), split="train").shuffle(seed=DATA_SEED)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train,
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))
    (out / "result.json").write_text(json.dumps(losses_and_tokens(trainer.state.log_history)))


def losses_and_tokens(log_history: list[dict]) -> dict:
    """Per-step losses and the real tokens trained on, from a Trainer's log history (logging_steps 1)."""
    return {"losses": [h["loss"] for h in log_history if "loss" in h],
            "real_tokens": int(max((h.get("num_tokens", 0) for h in log_history), default=0))}


# -- the sides, as seen from this script ------------------------------------------------------------------------

@dataclass
class Side:
    name: str
    command: Callable[[Path, argparse.Namespace], list[str]]  # (work folder, options) -> the process to time
    result: Callable[[Path], dict]  # (work folder) -> {"losses": [...], "real_tokens": n}, read after it exits
    caches: str = ""  # the datasets/zephyr cache folder's name (default: the side's own, so it starts cold)


def baseline_run(name: str, beta: float = 0.1, learning_rate: float = 1e-5, caches: str = "") -> Side:
    def command(work: Path, opts: argparse.Namespace) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--side", name, "--work", str(work),
                "--batch", str(opts.batch), "--max-length", str(opts.max_length), "--beta", str(beta),
                "--lr", str(learning_rate)]

    def result(work: Path) -> dict:
        return json.loads((work / name / "result.json").read_text())

    return Side(name, command, result, caches)


def zephyr_side(name: str, **levers: bool) -> Side:
    """`zephyr dpo` with its defaults, or with some levers switched (the recipe keys in `levers`)."""

    def command(work: Path, opts: argparse.Namespace) -> list[str]:
        import yaml

        # long_rows: truncate does what TRL does in the baseline (zephyr's default refuses such rows); at the
        # default sizes no pair is that long, so it changes nothing there
        recipe = {"model_name_or_path": str(work / "model"), "dtype": "float32",
                  "dataset_name": str(work / "prefs.jsonl"), "long_rows": "truncate", "output_dir": str(work / name),
                  **hyperparameters(opts.batch, opts.max_length), **levers}
        path = work / f"{name}_dpo.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return [sys.executable, "-m", "zephyr.cli", "dpo", str(path)]

    def result(work: Path) -> dict:
        return losses_and_tokens(json.loads((work / name / "trainer_state.json").read_text())["log_history"])

    return Side(name, command, result)


# Every side there is; `--sides` picks (default: baseline and zephyr). The others each switch one of zephyr's
# levers off (or, for no-ckpt, TRL's activation checkpointing off), to measure what that lever gives.
SIDES = {side.name: side for side in [
    baseline_run("baseline"),
    zephyr_side("zephyr"),
    zephyr_side("no-share", share_prompt=False),  # each pair's prompt computed twice
    zephyr_side("head-all", lm_head_labels_only=False),  # the LM head on every position (TRL's rule on CPU)
    zephyr_side("trl-kernel", cpu_log_prob_kernel=False),  # TRL's torch fallback for the LM head's log-probs
    zephyr_side("unpacked", packed_forward=False),  # padded batches (then neither of the two above applies)
    zephyr_side("no-ckpt", gradient_checkpointing=False),  # not a default: trades activation memory for time
]}


# -- the sweep line (--sweep): 6 trials, beta x learning rate -----------------------------------------------------

def grid() -> list[tuple[float, float]]:
    return [(beta, lr) for beta in SWEEP["beta"] for lr in SWEEP["learning_rate"]]


def trial_name(beta: float, lr: float) -> str:
    return f"beta={beta:g},lr={lr:g}"


def zephyr_sweep() -> Side:
    """`zephyr sweep` over the grid, one trial at a time, from the zephyr side's recipe."""

    def command(work: Path, opts: argparse.Namespace) -> list[str]:
        import yaml

        base = SIDES["zephyr"].command(work, opts)[-1]  # writes the recipe
        sweep = {"base": base, "stage": "dpo", "output_dir": str(work / "zephyr-sweep"),
                 "space": {key: {"choices": values} for key, values in SWEEP.items()}, "strategy": "grid",
                 "objective": {"metric": "train_loss", "direction": "minimize"}, "parallel": 1}
        path = work / "zephyr_sweep.yaml"
        path.write_text(yaml.safe_dump(sweep, sort_keys=False))
        return [sys.executable, "-m", "zephyr.cli", "sweep", str(path)]

    def result(work: Path) -> dict:
        trials = {}
        for row in json.loads((work / "zephyr-sweep" / "summary.json").read_text())["trials"]:
            state = json.loads((Path(row["folder"]) / "trainer_state.json").read_text())
            trials[trial_name(row["params"]["beta"], row["params"]["learning_rate"])] = losses_and_tokens(
                state["log_history"])
        return {"trials": trials, "losses": []}

    return Side("zephyr-sweep", command, result)


def sweep_line(work: Path, opts: argparse.Namespace, steps: int) -> tuple[list[str], dict, bool]:
    """Six baseline runs one after another (sharing one datasets cache, as on a user's machine) against one
    `zephyr sweep`; per-trial losses compared."""
    runs = {trial_name(b, lr): run_side(baseline_run(f"baseline-{trial_name(b, lr)}", b, lr, caches="baseline"),
                                        work, opts, steps) for b, lr in grid()}
    sweep = run_side(zephyr_sweep(), work, opts, steps * len(runs))
    base_seconds = sum(r["seconds"] for r in runs.values())
    diffs = {name: max((abs(a - b) for a, b in zip(run["losses"], sweep["trials"][name]["losses"], strict=True)),
                       default=math.inf) if len(run["losses"]) == len(sweep["trials"].get(name, {}).get("losses", []))
             else math.inf for name, run in runs.items()}
    ok = all(d < LOSS_TOLERANCE for d in diffs.values())
    lines = [f"{'sweep side':<22}{'wall s':>9}{'peak RSS GB':>13}{'trials':>8}{'max|dloss|':>12}",
             f"{'baseline (6 runs)':<22}{base_seconds:>9.1f}{max(r['peak_rss_gb'] for r in runs.values()):>13.2f}"
             f"{len(runs):>8}{'-':>12}",
             f"{'zephyr sweep':<22}{sweep['seconds']:>9.1f}{sweep['peak_rss_gb']:>13.2f}{len(sweep['trials']):>8}"
             f"{max(diffs.values()):>12.1e}",
             f"losses: {'every trial within' if ok else 'NOT every trial within'} {LOSS_TOLERANCE:g} of its baseline run",
             f"sweep: {sweep['seconds'] / base_seconds:.2f}x the baseline's time for {len(runs)} dDPO trials "
             f"(target: at most 0.30x)"]
    return lines, {"runs": runs, "sweep": sweep, "max_loss_diff": diffs}, ok


def run_side(side: Side, work: Path, opts: argparse.Namespace, steps: int) -> dict:
    """Start the side's process, wait for it to exit; its wall seconds and peak RSS, and what it wrote."""
    cold = work / f"{side.caches or side.name}-caches"  # empty at first: nothing of another side is reused
    env = {**os.environ, "HF_DATASETS_CACHE": str(cold / "datasets"), "ZEPHYR_CACHE": str(cold / "zephyr"),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = side.command(work, opts)
    log = work / f"{side.name}.log"
    print(f"{side.name}: started ({' '.join(command[1:])}); log {log}", flush=True)
    done = threading.Event()
    with open(log, "w") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        threading.Thread(target=report_progress, args=(side.name, log, steps, start, done), daemon=True).start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS, not the largest child's
        except BaseException:  # Ctrl-C: do not leave the side running
            proc.kill()
            proc.wait()
            raise
        finally:
            done.set()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{side.name} failed (exit {proc.returncode}); the end of {log}:\n{log.read_text()[-4000:]}")
    result = side.result(work)
    print(f"{side.name}: done in {seconds:.1f} s", flush=True)
    return {"side": side.name, "seconds": seconds, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, **result}


def report_progress(name: str, log: Path, steps: int, start: float, done: threading.Event) -> None:
    """Every 30 s: how far the side is (logged losses in its output, one per step)."""
    while not done.wait(30):
        logged = sum(line.count("'loss'") + line.count('"loss"') for line in log.read_text().splitlines())
        print(f"  {name}: {time.perf_counter() - start:.0f} s, {min(logged, steps)}/{steps} steps", flush=True)


# -- the floor: what this machine's matmuls sustain ---------------------------------------------------------------

def matmul_rate(m: int, k: int, n: int, min_seconds: float = 1.0) -> float:
    """fp32 FLOP/s of [m x k] @ [k x n], sustained over at least `min_seconds` after a warm-up."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    iters, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds or iters < 3:
        a @ b
        iters += 1
    return 2 * m * k * n * iters / elapsed


def model_shapes(model_dir: Path) -> dict:
    """hidden, vocab, N (parameters doing a matmul per token: all but the input embedding) and the LM head's."""
    from safetensors import safe_open

    config = json.loads((model_dir / "config.json").read_text())
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        sizes = {name: math.prod(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    n = sum(size for name, size in sizes.items() if "embed_tokens" not in name)
    return {"hidden": config["hidden_size"], "vocab": config["vocab_size"], "n_params": n,
            "n_head": sizes.get("lm_head.weight", 0)}


def measure_floor_rate(shapes: dict, cores: int) -> dict:
    """The matmul rate the floor is computed at: the layers' shape and the LM head's, weighted by parameters."""
    import torch

    torch.set_num_threads(cores)
    h, t = shapes["hidden"], MATMUL_TOKENS
    layers, head = matmul_rate(t, h, 3 * h), matmul_rate(t, h, shapes["vocab"])
    n, n_head = shapes["n_params"], shapes["n_head"]
    blended = n / ((n - n_head) / layers + n_head / head)
    return {"layers_flops_per_s": layers, "head_flops_per_s": head, "flops_per_s": blended, "threads": cores}


# -- the parent: prepare, run every side, compare, report -------------------------------------------------------

def prepare(work: Path, opts: argparse.Namespace) -> None:
    """The model (random init, saved with its tokenizer) and the preference rows both sides read."""
    import synthetic

    build = [sys.executable, "-m", "zephyr.cli", "tiny-model", "--tokenizer", opts.tokenizer, "--hidden-size",
             str(opts.hidden), "--num-layers", str(opts.layers), "--output-dir", str(work / "tiny")]
    proc = subprocess.run(build, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        sys.exit(f"building the model failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    shutil.move(str(work / "tiny" / "model"), str(work / "model"))
    shutil.rmtree(work / "tiny")  # the embedded datasets written alongside are not used here
    synthetic.write_jsonl(synthetic.preference_rows(opts.pairs, seed=0, max_words=MAX_WORDS), work / "prefs.jsonl")


def report(results: list[dict], shapes: dict, rate: dict, opts: argparse.Namespace) -> tuple[list[str], bool]:
    """The table lines (the headline last) and whether every side's losses matched the baseline's."""
    base = results[0]
    ok = True
    lines = [f"{'side':<10}{'wall s':>9}{'peak RSS GB':>13}{'steps':>7}{'max|dloss|':>12}{'real tokens':>13}"
             f"{'GFLOP':>9}{'GFLOP/s':>9}{'of floor':>10}"]
    for r in results:
        flops = 8 * shapes["n_params"] * r["real_tokens"]
        same_steps = len(r["losses"]) == len(base["losses"])
        diff = max((abs(a - b) for a, b in zip(r["losses"], base["losses"], strict=False)), default=math.inf)
        r.update(flops=flops, max_loss_diff=diff if same_steps else math.inf,
                 floor_fraction=flops / rate["flops_per_s"] / r["seconds"])
        ok &= r["max_loss_diff"] < LOSS_TOLERANCE
        lines.append(f"{r['side']:<10}{r['seconds']:>9.1f}{r['peak_rss_gb']:>13.2f}{len(r['losses']):>7}"
                     f"{r['max_loss_diff']:>12.1e}{r['real_tokens']:>13}{flops / 1e9:>9.0f}"
                     f"{flops / 1e9 / r['seconds']:>9.2f}{r['floor_fraction']:>9.1%}")
    lines.append(f"floor: {rate['flops_per_s'] / 1e9:.1f} GFLOP/s fp32 matmul on {rate['threads']} threads "
                 f"(layers [{MATMUL_TOKENS}x{shapes['hidden']}]@[{shapes['hidden']}x{3 * shapes['hidden']}] "
                 f"{rate['layers_flops_per_s'] / 1e9:.1f}, LM head [{MATMUL_TOKENS}x{shapes['hidden']}]@"
                 f"[{shapes['hidden']}x{shapes['vocab']}] {rate['head_flops_per_s'] / 1e9:.1f}); "
                 f"N = {shapes['n_params'] / 1e6:.2f}M parameters; the baseline's GFLOP take "
                 f"{base['flops'] / rate['flops_per_s']:.1f} s at that rate")
    lines.append(f"losses: {'every side within' if ok else 'NOT all within'} {LOSS_TOLERANCE:g} of the baseline at "
                 f"every step" + ("" if ok else " (see max|dloss|; steps must match too)"))
    zephyr = next(r for r in results if r["side"] == "zephyr")
    lines.append(f"headline: {base['seconds'] / zephyr['seconds']:.2f}x end-to-end vs TRL (handbook way)")
    return lines, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokenizer", choices=["mistral", "bpe"], default="mistral")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--out", type=Path, help="work folder to keep (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--sides", type=lambda v: v.split(","), default=["baseline", "zephyr"],
                        help=f"comma-separated, baseline and zephyr first (default baseline,zephyr); of {', '.join(SIDES)}")
    parser.add_argument("--sweep", action="store_true",
                        help="the sweep line instead: 6 trials (beta x learning rate) as 6 baseline runs vs one "
                        "`zephyr sweep`")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # inside a baseline run's own process: its name
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--beta", type=float, default=0.1, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=1e-5, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.sides[:2] != ["baseline", "zephyr"] or set(opts.sides) - set(SIDES):
        parser.error(f"--sides: baseline,zephyr first, then any of {', '.join(SIDES)}")
    if opts.side:
        baseline_side(opts.work, opts.batch, opts.max_length, opts.beta, opts.lr, opts.side)
        return

    work = opts.out or Path(tempfile.mkdtemp(prefix="zephyr-dpo-e2e-"))
    if opts.out:
        shutil.rmtree(work, ignore_errors=True)  # cold: nothing of a previous run is reused
        work.mkdir(parents=True)
    work = work.resolve()
    cores = len(os.sched_getaffinity(0))  # the cores this process (and so each side) may run on
    steps = math.ceil(opts.pairs / opts.batch)
    print(f"dDPO end to end: {opts.pairs} pairs ({steps} steps of {opts.batch}), Mistral {opts.hidden}x{opts.layers} "
          f"with the {opts.tokenizer} tokenizer, max_length {opts.max_length}, fp32, CPU {cores} cores; work {work}",
          flush=True)
    prepare(work, opts)
    if opts.sweep:
        lines, results, ok = sweep_line(work, opts, steps)
        if opts.json:
            opts.json.write_text(json.dumps({"options": {k: str(v) for k, v in vars(opts).items()}, **results,
                                             "losses_match": ok, "headline": lines[-1]}, indent=2))
        finish(work, opts, lines, ok)
        return
    shapes = model_shapes(work / "model")
    rate = measure_floor_rate(shapes, cores)
    results = [run_side(SIDES[name], work, opts, steps) for name in opts.sides]
    lines, ok = report(results, shapes, rate, opts)
    if opts.json:
        opts.json.write_text(json.dumps({"options": {k: str(v) for k, v in vars(opts).items()}, "model": shapes,
                                         "matmul": rate, "sides": results, "losses_match": ok,
                                         "headline": lines[-1]}, indent=2))
    finish(work, opts, lines, ok)


def finish(work: Path, opts: argparse.Namespace, lines: list[str], ok: bool) -> None:
    if not opts.out:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(lines), flush=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
