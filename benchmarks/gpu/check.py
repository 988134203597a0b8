"""GPU check kit: one script that proves zephyr's GPU paths in one short run on a GPU node.

    bash benchmarks/gpu/run.sh                      # on the GPU machine (installs the carried wheels first)
    python benchmarks/gpu/check.py --smoke --out D  # the same code paths on CPU with a tiny model (~1 min)

It builds its own random-init Mistral models (Mistral-7B's real 32k tokenizer) and UltraFeedback-like data, runs
each check independently (a failure is recorded and the rest still run), and after every check rewrites
`<out>/gpu_check.json` and `<out>/gpu_check.md`, so a run cut short still leaves what it measured. The table is
printed last. Checks:

  env                  versions, device, which optional packages are importable
  matmul               the measured dense matmul rate (bf16 on GPU): the denominator of model FLOPs utilisation
  packed[ATTN]         the packed DPO forward (zephyr/packing.py), plain and with each pair's prompt shared, against the
                       padded one, per attention kernel
  dpo-step0            zephyr's dDPO defaults: step-0 loss = ln 2, a few steps on one batch lower the loss
  dpo-reference        with a reference copy: the reference weights are bitwise unchanged after training
  throughput           dDPO on a slice of a 7B (Mistral-7B's layer shape, 8 layers): TRL the handbook's way, TRL
                       with a precomputed reference, the same with Liger's kernels, and zephyr's defaults, each a
                       whole process on the same batches: pairs/s, tokens/s, MFU, peak memory, losses
  zero3                zephyr's dDPO under DeepSpeed ZeRO-3 (accelerate launch, one process) against the plain run
  generation           the AIF transformers backend's completions/s
  qlora                4-bit NF4 + LoRA dDPO steps (bitsandbytes)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
LN2 = math.log(2)


@dataclass(frozen=True)
class Scale:
    """Sizes of one run of the kit. `big` is the throughput/generation model, `small` the correctness one."""

    big: tuple[int, int, int, int, int]  # hidden, layers, heads, kv heads, intermediate (throughput, generation)
    small: tuple[int, int, int, int, int]
    pairs: int  # preference pairs of the throughput run (one epoch)
    batch: int
    max_length: int
    max_words: int  # cap on words per message of the synthetic data
    gen_requests: int
    gen_tokens: int
    gen_batch: int
    matmul_n: int
    budget_s: float  # checks that would start after this many seconds are skipped


# The throughput model is Mistral-7B's layer shape (hidden 4096, 32 heads, 8 KV heads, MLP 14336, 32k vocabulary)
# with 8 of its 32 layers: 1.75B parameters, which TRL's handbook way (policy, reference copy, AdamW states, bf16)
# fits on one 80 GB GPU at batch 8 and max_length 1024 without gradient checkpointing. Per-layer throughput is what
# carries over to the 32-layer model; the report extrapolates it (`SEVEN_B_LAYERS`).
SEVEN_B_LAYERS = 32
GPU = Scale(big=(4096, 8, 32, 8, 14336), small=(768, 8, 12, 4, 2048), pairs=512, batch=8, max_length=1024,
            max_words=300, gen_requests=256, gen_tokens=128, gen_batch=64, matmul_n=8192, budget_s=420)
SMOKE = Scale(big=(64, 2, 4, 2, 192), small=(64, 2, 4, 2, 192), pairs=16, batch=8, max_length=128, max_words=20,
              gen_requests=16, gen_tokens=8, gen_batch=8, matmul_n=256, budget_s=300)


@dataclass
class Result:
    name: str
    status: str  # ok | fail | skipped
    summary: str
    seconds: float = 0.0
    details: dict | None = None


class Kit:
    """What every check shares: device, dtypes, scale, the work folder, model folders built once."""

    def __init__(self, out: Path, smoke: bool) -> None:
        import torch

        self.torch, self.out, self.smoke = torch, out, smoke
        self.scale = SMOKE if smoke else GPU
        self.cuda = torch.cuda.is_available() and not smoke
        self.device = torch.device("cuda" if self.cuda else "cpu")
        # The dtype under test, and a wider one that stands for the exact result.
        self.dtype, self.truth_dtype = (torch.bfloat16, torch.float32) if self.cuda else (torch.float32, torch.float64)
        self.work = out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.tokenizer_dir = self._tokenizer()
        self.peak_flops: float | None = None
        self.started = time.perf_counter()
        self._models: dict[str, Path] = {}

    def _tokenizer(self) -> Path:
        carried = ROOT / "benchmarks" / "gpu" / "wheels" / "mistral-tokenizer"
        if (carried / "tokenizer.json").is_file():
            return carried
        import synthetic

        return synthetic.save_mistral_tokenizer(self.work / "mistral-tokenizer")

    def model_dir(self, size: str) -> Path:
        """A random-init Mistral-architecture model folder (safetensors + tokenizer), seeded, built once."""
        if size in self._models:
            return self._models[size]
        torch = self.torch
        from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

        hidden, layers, heads, kv, inter = getattr(self.scale, size)
        tok = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        config = MistralConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter,
                               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                               max_position_embeddings=4096, sliding_window=None, tie_word_embeddings=False,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        with torch.device(self.device):  # initialising 1B parameters on the GPU takes a second, on CPU a minute
            model = MistralForCausalLM(config)
        folder = self.work / f"model-{size}"
        model.to(self.dtype).save_pretrained(folder)
        tok.save_pretrained(folder)
        del model
        self._models[size] = folder
        return folder

    def data(self, name: str, pairs: int, seed: int = 0) -> Path:
        import synthetic

        path = self.work / f"{name}.jsonl"
        if not path.is_file():
            synthetic.write_jsonl(synthetic.preference_rows(pairs, seed, self.scale.max_words), path)
        return path

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


CHECKS: list[tuple[str, Callable[[Kit], Result]]] = []


def check(name: str):
    def register(fn: Callable[[Kit], Result]) -> Callable[[Kit], Result]:
        CHECKS.append((name, fn))
        return fn

    return register


def missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


# ---------------------------------------------------------------------------------------------------- checks


@check("env")
def check_env(kit: Kit) -> Result:
    import importlib.metadata as md

    torch = kit.torch
    versions = {}
    for dist in ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "tokenizers", "bitsandbytes",
                 "flash-attn", "liger-kernel", "deepspeed", "vllm"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    device = torch.cuda.get_device_name(0) if kit.cuda else f"CPU ({os.cpu_count()} cores)"
    details = {"python": platform.python_version(), "device": device, "versions": versions,
               "cuda": torch.version.cuda, "smoke": kit.smoke}
    if kit.cuda:
        free, total = torch.cuda.mem_get_info()
        details |= {"capability": ".".join(map(str, torch.cuda.get_device_capability())),
                    "gpu_memory_gib": round(total / 2**30, 1)}
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    return Result("env", "ok", f"{device}; Python {details['python']}; {shown}", details=details)


@check("matmul")
def check_matmul(kit: Kit) -> Result:
    """Dense n^3 matmul in the kit's dtype: what the hardware sustains here, measured in the same run."""
    torch, n = kit.torch, kit.scale.matmul_n
    a = torch.randn(n, n, device=kit.device, dtype=kit.dtype)
    b = torch.randn(n, n, device=kit.device, dtype=kit.dtype)
    for _ in range(3):
        a @ b
    kit.sync()
    iters, start = 20, time.perf_counter()
    for _ in range(iters):
        a @ b
    kit.sync()
    seconds = time.perf_counter() - start
    kit.peak_flops = 2 * n**3 * iters / seconds
    return Result("matmul", "ok", f"{kit.peak_flops / 1e12:.1f} TFLOP/s ({str(kit.dtype)[6:]}, {n}^3)",
                  details={"flops_per_s": kit.peak_flops, "n": n, "dtype": str(kit.dtype)})


def padded_batch(kit: Kit, tokenizer, rows: int, seed: int):
    """Right-padded sequences with log-normal lengths and a masked prompt, as TRL's DPO collator builds them: rows
    i and i + rows/2 are a pair (chosen, rejected) with the same prompt."""
    import random

    torch = kit.torch
    rng = random.Random(seed)
    lengths = [max(8, min(kit.scale.max_length, int(rng.lognormvariate(math.log(kit.scale.max_length / 3), 0.6))))
               for _ in range(rows)]
    width = max(lengths)
    ids = torch.full((rows, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    labels = torch.full((rows, width), -100, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    half = rows // 2
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, len(tokenizer), (n,), generator=gen)
        mask[i, :n] = 1
        pair = i % half if half else i
        prompt = min(lengths[pair], lengths[pair + half] if half else n) // 3
        ids[i, :prompt] = ids[pair, :prompt]
        labels[i, prompt:n] = ids[i, prompt:n]
    return ids.to(kit.device), mask.to(kit.device), labels.to(kit.device)


def packed_check(kit: Kit, attn: str) -> Result:
    """Per-token log-probs of the packed forward against the padded forward, both in the kit's dtype, and both
    against the same weights run in a wider dtype (the stand-in for exact).

    Why this tolerance: packing only changes the shapes the kernels see (one row of several sequences instead of
    one padded row each), so the two low-precision results differ by rounding alone, of the same order as each
    one's distance from the exact result. The gate is: per sequence, the mean |packed - padded| per token is at
    most twice the padded path's own worst mean error against the wide-dtype result, or one unit roundoff of the
    dtype times the mean |log-prob|, whichever is larger. A real packing bug (a token attending across sequences,
    a shifted position id, a misplaced label) moves log-probs by whole nats, orders of magnitude above it."""
    torch = kit.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.utils import add_fused_lm_head

    from zephyr.levers import choose_layout
    from zephyr.packing import layout_forward, shared_prompt_layout

    folder = kit.model_dir("small")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=kit.dtype, attn_implementation=attn)
    model = model.to(kit.device).eval()
    exact = AutoModelForCausalLM.from_pretrained(folder, dtype=kit.truth_dtype, attn_implementation="eager")
    exact = exact.to(kit.device).eval()
    add_fused_lm_head(model)
    add_fused_lm_head(exact)
    ids, mask, labels = padded_batch(kit, tokenizer, 16, seed=1)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs.double()
        # the layouts zephyr/levers.py chooses for this model and kernel, as the DPO trainer runs them
        plain, both = (choose_layout(model.config, True, share, attn) for share in (False, True))
        packed = layout_forward(model, plain, tokenizer.pad_token_id)(ids, mask, labels,
                                                                      fused_lm_head=True).log_probs.double()
        shared = layout_forward(model, both, tokenizer.pad_token_id)(ids, mask, labels,
                                                                     fused_lm_head=True).log_probs.double()
        truth = exact(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs.double()
    scored = (labels[:, 1:] != -100).double()
    n = scored.sum(1)

    def per_seq(a, b):  # mean |a - b| per scored token, per sequence
        return ((a - b).abs() * scored).sum(1) / n

    diff, pad_err, pack_err = per_seq(packed, padded), per_seq(padded, truth), per_seq(packed, truth)
    # each pair's prompt once (share_prompt): sdpa, eager and flex take its mask; FlashAttention runs plain packing
    shares = both.layout == "shared_prompt" and shared_prompt_layout(ids, mask, labels, tokenizer.pad_token_id) is not None
    shared_diff = float(per_seq(shared, padded).max())
    roundoff = torch.finfo(kit.dtype).eps / 2
    mean_abs = float((truth.abs() * scored).sum() / scored.sum())
    tolerance = max(2 * float(pad_err.max()), roundoff * mean_abs)
    sum_diff = float((((packed - padded) * scored).sum(1)).abs().max())
    details = {"max_mean_abs_diff_per_token": float(diff.max()), "padded_max_err_vs_exact": float(pad_err.max()),
               "packed_max_err_vs_exact": float(pack_err.max()), "tolerance": tolerance,
               "max_abs_diff_sequence_sum": sum_diff, "sequences": int(ids.shape[0]), "width": int(ids.shape[1]),
               "real_tokens": int(mask.sum()), "mean_abs_logp": mean_abs,
               "shared_prompt": shares, "shared_max_mean_abs_diff_per_token": shared_diff}
    ok = float(diff.max()) <= tolerance and shared_diff <= tolerance and shares == (attn in ("sdpa", "eager", "flex_attention"))
    summary = (f"max per-token |packed-padded| {float(diff.max()):.2e} <= {tolerance:.2e}" if ok else
               f"packed differs from padded: {float(diff.max()):.2e} > tolerance {tolerance:.2e}")
    summary += f" (padded vs exact {float(pad_err.max()):.2e}, packed vs exact {float(pack_err.max()):.2e})"
    summary += f"; shared prompt {shared_diff:.2e}" + ("" if shares else " (plain packing: no custom mask)")
    return Result(f"packed[{attn}]", "ok" if ok else "fail", summary, details=details)


@check("packed[sdpa]")
def check_packed_sdpa(kit: Kit) -> Result:
    return packed_check(kit, "sdpa")


@check("packed[eager]")
def check_packed_eager(kit: Kit) -> Result:
    return packed_check(kit, "eager")


def dpo_config(kit: Kit, out: Path, **overrides):
    from zephyr.configs import ZephyrDPOConfig

    settings = {"output_dir": str(out), "per_device_train_batch_size": kit.scale.batch, "max_length":
                kit.scale.max_length, "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no",
                "report_to": "none", "seed": 0, "dataloader_num_workers": 0, "disable_tqdm": True,
                "bf16": kit.cuda, "use_cpu": not kit.cuda}
    return ZephyrDPOConfig(**(settings | overrides))


def small_dpo_run(kit: Kit, name: str, steps: int, **overrides):
    """dDPO through zephyr's own stage code (`zephyr.stages.dpo.build_trainer`) on one batch seen `steps` times:
    fp32 master weights with bf16 autocast on GPU (the Trainer's mixed precision)."""
    from zephyr.configs import DataArguments, ModelArguments
    from zephyr.stages import dpo

    data = kit.data("one-batch", kit.scale.batch, seed=2)
    model_args = ModelArguments(model_name_or_path=str(kit.model_dir("small")), dtype="float32")
    data_args = DataArguments(dataset_name=str(data), long_rows="truncate", dataset_test_split=None)
    args = dpo_config(kit, kit.work / name, num_train_epochs=steps, learning_rate=5e-5, lr_scheduler_type="constant",
                      **overrides)
    trainer, _, _ = dpo.build_trainer(model_args, data_args, args)
    return trainer


def losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@check("dpo-step0")
def check_dpo_step0(kit: Kit) -> Result:
    """Step-0 loss with zephyr's defaults (packed forward, reference log-probs precomputed by a padded pass).

    Tolerance: policy and reference start as the same weights, so the step-0 margin is only the rounding
    difference between the packed policy pass and the padded reference pass (measured by the packed[...] checks at
    well under 0.01 nat per token, so under ~1 nat per sequence sum at these lengths). The sigmoid loss moves by
    beta/4 per nat of margin: beta 0.1 -> at most 0.025, taken as the bf16 tolerance; fp32 (smoke) uses 1e-4."""
    trainer = small_dpo_run(kit, "dpo-step0", steps=4 if kit.smoke else 8)
    trainer.train()
    got = losses(trainer)
    tolerance = 0.025 if kit.cuda else 1e-4
    step0_ok = abs(got[0] - LN2) <= tolerance
    learns = got[-1] < got[0] - 0.01
    details = {"losses": got, "step0_tolerance": tolerance, "beta": trainer.args.beta}
    summary = f"step 0 {got[0]:.5f} (ln 2 = {LN2:.5f}, tol {tolerance}); after {len(got)} steps {got[-1]:.4f}"
    if not step0_ok:
        summary = "step-0 loss is not ln 2: " + summary
    elif not learns:
        summary = "loss did not fall on a repeated batch: " + summary
    return Result("dpo-step0", "ok" if step0_ok and learns else "fail", summary, details=details)


@check("dpo-reference")
def check_dpo_reference(kit: Kit) -> Result:
    """A reference copy (no precompute): after training the reference is bitwise what it was, the policy moved,
    and the reference stayed in eval mode without gradients."""
    torch = kit.torch
    trainer = small_dpo_run(kit, "dpo-reference", steps=2, precompute_ref_log_probs=False)
    before = {k: v.detach().clone() for k, v in trainer.ref_model.state_dict().items()}
    policy_before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    ref_after = trainer.ref_model.state_dict()
    changed_ref = [k for k, v in before.items() if not torch.equal(v, ref_after[k])]
    policy_after = trainer.model.state_dict()
    moved = sum(not torch.equal(v, policy_after[k].to(v.device)) for k, v in policy_before.items())
    frozen = not trainer.ref_model.training and not any(p.requires_grad for p in trainer.ref_model.parameters())
    got = losses(trainer)
    ok = not changed_ref and moved > 0 and frozen and abs(got[0] - LN2) <= (0.025 if kit.cuda else 1e-4)
    summary = (f"reference unchanged ({len(before)} tensors), {moved} policy tensors moved, step 0 {got[0]:.5f}"
               if ok else f"reference changed: {changed_ref[:3]}; policy tensors moved {moved}; frozen {frozen}; "
               f"step 0 {got[0]:.5f}")
    return Result("dpo-reference", "ok" if ok else "fail", summary,
                  details={"changed_reference_tensors": changed_ref, "policy_tensors_moved": moved, "losses": got})


# TRL as its users run it: the handbook's way (a reference copy run at every step), with the reference's log-probs
# precomputed, and the same with Liger's kernels (in TRL 1.16 Liger's RMSNorm, RoPE and SwiGLU kernels: TRL's own
# fused LM head computes the log-probs, so Liger's fused linear loss is not used there).
TRL_VARIANTS = {"trl-handbook": {}, "trl-precompute": {"precompute_ref_log_probs": True},
                "trl-precompute-liger": {"precompute_ref_log_probs": True, "use_liger_kernel": True}}
THROUGHPUT_VARIANTS = (*TRL_VARIANTS, "zephyr")


def variant_unavailable(kit: Kit, variant: str) -> str | None:
    if TRL_VARIANTS.get(variant, {}).get("use_liger_kernel"):
        if not kit.cuda:
            return "Liger's kernels are Triton kernels: CUDA only"
        if missing("liger_kernel"):
            return "liger-kernel is not installed"
    return None


@check("throughput")
def check_throughput(kit: Kit) -> Result:
    """One epoch of dDPO over the same pairs in the same order, each variant a whole process of its own (so its
    time and peak memory are its own): data preparation, model loading, reference pass and training all count."""
    model, data = kit.model_dir("big"), kit.data("prefs", kit.scale.pairs)
    results, skipped = {}, {}
    for variant in THROUGHPUT_VARIANTS:
        why = variant_unavailable(kit, variant)
        if why:
            skipped[variant] = why
            continue
        cmd = [sys.executable, __file__, "--variant", variant, "--model", str(model), "--data", str(data),
               "--out", str(kit.out)] + (["--smoke"] if kit.smoke else [])
        # each side cold, with caches of its own: no side reuses another's reference log-probs
        cache = kit.work / "throughput-cache" / variant
        env = {**os.environ, "ZEPHYR_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache / "datasets"),
               "TQDM_DISABLE": "1"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=kit.scale.budget_s)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
            return Result("throughput", "fail", f"{variant} exited {proc.returncode}: {tail.splitlines()[-1:]}",
                          details={"variant": variant, "log_tail": tail})
        results[variant] = json.loads(line[7:]) | {"process_seconds": time.perf_counter() - start}
    ours = results["zephyr"]
    n, tokens = ours["non_embedding_params"], ours["real_tokens"]
    model_flops = 8 * n * tokens  # 6NT policy forward+backward, 2NT reference forward; attention scores left out
    for r in results.values():
        r["pairs_per_s"] = kit.scale.pairs / r["end_to_end_seconds"]
        r["tokens_per_s"] = r["real_tokens"] / r["end_to_end_seconds"]
        r["train_tokens_per_s"] = r["real_tokens"] / r["train_seconds"]
        if kit.peak_flops:
            r["mfu"] = model_flops / r["end_to_end_seconds"] / kit.peak_flops
        # the full model: the same per-layer work times 32 layers, plus the LM head, on each GPU of a data-parallel
        # run (ZeRO-3's gathers across GPUs are not in this figure)
        seven_b = SEVEN_B_LAYERS * r["params_per_layer"] + r["head_params"]
        r["extrapolated_7b_pairs_per_s_per_gpu"] = r["pairs_per_s"] * n / seven_b
    trl = {k: v for k, v in results.items() if k in TRL_VARIANTS}
    fastest = min(trl, key=lambda k: trl[k]["end_to_end_seconds"])
    diffs = {k: max(abs(a - b) for a, b in zip(v["losses"], ours["losses"], strict=True)) for k, v in trl.items()}
    worst = max(diffs.values())
    # bf16: per-sequence log-prob sums differ by rounding between the packed and padded paths (~1 nat, see
    # dpo-step0); with the handbook's beta 0.01 that moves the loss by at most ~0.0025. fp32 (smoke): 1e-4.
    loss_tolerance = 0.0025 if kit.cuda else 1e-4
    speedup = trl[fastest]["end_to_end_seconds"] / ours["end_to_end_seconds"]
    ok = worst <= loss_tolerance and all(len(v["losses"]) == len(ours["losses"]) for v in trl.values())
    mfu = "".join(f", MFU {r['mfu']:.1%}" for r in [ours] if "mfu" in r)
    summary = (f"{speedup:.2f}x the fastest TRL side ({fastest}: {trl[fastest]['end_to_end_seconds']:.1f} s -> "
               f"{ours['end_to_end_seconds']:.1f} s; {ours['pairs_per_s']:.2f} pairs/s, {ours['tokens_per_s']:.0f} "
               f"real tok/s{mfu}; full 7B ~{ours['extrapolated_7b_pairs_per_s_per_gpu']:.2f} pairs/s per GPU); peak "
               f"memory {trl[fastest]['peak_memory_gib']:.1f} -> {ours['peak_memory_gib']:.1f} GiB; max |loss diff| "
               f"{worst:.1e} (tol {loss_tolerance})")
    return Result("throughput", "ok" if ok else "fail", summary,
                  details={"variants": results, "skipped_variants": skipped, "fastest_trl": fastest,
                           "speedup_end_to_end": speedup, "max_loss_diff": worst, "loss_diffs": diffs,
                           "loss_tolerance": loss_tolerance, "model_flops": model_flops, "pairs": kit.scale.pairs,
                           "real_tokens_per_pair": tokens / kit.scale.pairs})


def timed(owner, name: str, cuda: bool) -> list[float]:
    """Record the seconds of every call to `owner.name` (a benchmark-only wrapper)."""
    import torch

    seconds: list[float] = []
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        return out

    setattr(owner, name, wrapper)
    return seconds


def run_variant(variant: str, model: Path, data: Path, smoke: bool) -> dict:
    """Inside the variant's own process: build, train one epoch, report. The clock starts after the imports (the
    same for both variants): data preparation, model loading, the reference pass and training count."""
    import resource

    import torch

    from zephyr.configs import DataArguments, ModelArguments
    from zephyr.data import prepare_datasets
    from zephyr.modeling import load_tokenizer
    from zephyr.stages import dpo

    start = time.perf_counter()
    cuda = torch.cuda.is_available() and not smoke
    scale = SMOKE if smoke else GPU
    dtype = "bfloat16" if cuda else "float32"
    # The alignment-handbook's zephyr-7b-beta dDPO values: beta 0.01, lr 5e-7, cosine, 10% warmup, bf16 weights.
    common = {"output_dir": str(data.parent / variant), "per_device_train_batch_size": scale.batch,
              "num_train_epochs": 1, "max_length": scale.max_length, "learning_rate": 5e-7, "beta": 0.01,
              "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "logging_steps": 1, "save_strategy": "no",
              "eval_strategy": "no", "report_to": "none", "gradient_checkpointing": False, "seed": 0,
              "bf16": cuda, "use_cpu": not cuda, "disable_tqdm": True, "dataloader_num_workers": 0}
    model_args = ModelArguments(model_name_or_path=str(model), dtype=dtype)
    data_args = DataArguments(dataset_name=str(data), long_rows="truncate", dataset_test_split=None)
    if variant in TRL_VARIANTS:  # TRL's DPOTrainer on padded batches, as its users set it up
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig, DPOTrainer

        tokenizer = load_tokenizer(model_args)
        train, _, _ = prepare_datasets(data_args, "preference", tokenizer, scale.max_length)
        load = {"dtype": getattr(torch, dtype)}
        settings = TRL_VARIANTS[variant]
        ref = None if settings.get("precompute_ref_log_probs") else AutoModelForCausalLM.from_pretrained(model, **load)
        trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model, **load),
                             args=DPOConfig(**common, **settings), ref_model=ref, train_dataset=train,
                             processing_class=tokenizer)
    else:
        from zephyr.configs import ZephyrDPOConfig

        calls = timed(dpo.ZephyrDPOTrainer, "compute_ref_log_probs", cuda)
        hashes = timed(sys.modules["zephyr.hooks.reference"], "fast_module_hash", cuda)
        # the reference pass in batches of ~64k tokens (ref_token_budget): forward-only, packed, so far larger
        # batches than training's fit; in the smoke run, every pair in one batch
        trainer, _, _ = dpo.build_trainer(model_args, data_args, ZephyrDPOConfig(**common, ref_token_budget=65536
                                                                                 if cuda else 10**6))
        # where the reference pass goes: its first batch (kernel compilation), the other batches, the hash
        breakdown = {"first_ref_batch_seconds": calls[0], "other_ref_batches_seconds": sum(calls[1:]),
                     "ref_batches": len(calls), "reference_hash_seconds": sum(hashes)}
    import synthetic

    tokens = synthetic.count_real_tokens(trainer)
    built = time.perf_counter()
    trainer.train()
    if cuda:
        torch.cuda.synchronize()
    end = time.perf_counter()
    net = trainer.model
    n = sum(p.numel() for name, p in net.named_parameters() if "embed_tokens" not in name)
    head = net.get_output_embeddings().weight.numel()
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"variant": variant, "setup_seconds": built - start, "train_seconds": end - built,
              "end_to_end_seconds": end - start, "real_tokens": sum(tokens), "steps": len(tokens),
              "losses": losses(trainer), "peak_memory_gib": peak / 2**30, "non_embedding_params": n,
              "head_params": head, "params_per_layer": (n - head) / net.config.num_hidden_layers,
              "memory_kind": "max_memory_allocated" if cuda else "peak RSS"}
    if variant == "zephyr":
        result |= breakdown
    stats = Path(common["output_dir"]) / "reference_logps.json"
    if stats.is_file():  # zephyr: how long its reference pass took
        result["reference_pass_seconds"] = json.loads(stats.read_text())["train"]["seconds"]
    if variant == "zephyr":  # what keying the reference cache costs, TRL's way and zephyr's, after the run
        from trl.trainer.utils import hash_module

        from zephyr.hooks import fast_module_hash

        for name, fn in (("trl_hash_seconds", hash_module), ("zephyr_hash_seconds", fast_module_hash)):
            t0 = time.perf_counter()
            fn(net)
            result[name] = time.perf_counter() - t0
    return result


@check("generation")
def check_generation(kit: Kit) -> Result:
    """The AIF transformers backend (zephyr/aif/backends.py) sampling answers from the big model."""
    import synthetic

    from zephyr.inference.backends import ChatRequest, TransformersBackend
    from zephyr.inference.settings import EndpointSettings

    s = kit.scale
    backend = TransformersBackend(EndpointSettings(model=str(kit.model_dir("big")), dtype=str(kit.dtype)[6:],
                                                   batch_size=s.gen_batch))
    rows = synthetic.preference_rows(s.gen_requests, seed=3, max_words=60)
    requests = [ChatRequest(messages=r["prompt"], temperature=0.7, max_new_tokens=s.gen_tokens) for r in rows]
    backend.complete(requests[: s.gen_batch], seed=0)  # warm-up: kernels, caches
    kit.sync()
    start = time.perf_counter()
    results = backend.complete(requests, seed=1)
    kit.sync()
    seconds = time.perf_counter() - start
    failed = sum(r.failure is not None or r.text is None for r in results)
    new_tokens = sum(len(backend.tokenizer(r.text or "", add_special_tokens=False).input_ids) for r in results)
    rate = len(results) / seconds
    ok = failed == 0 and len(results) == len(requests)
    return Result("generation", "ok" if ok else "fail",
                  f"{rate:.1f} completions/s, ~{new_tokens / seconds:.0f} new tokens/s (batch {s.gen_batch}, up to "
                  f"{s.gen_tokens} new tokens, {len(results)} requests, {failed} failed)",
                  details={"completions_per_s": rate, "new_tokens_per_s": new_tokens / seconds, "failed": failed,
                           "requests": len(results), "seconds": seconds})


@check("qlora")
def check_qlora(kit: Kit) -> Result:
    """4-bit NF4 weights + LoRA through zephyr's dDPO stage: the reference is the base with the adapter off, so
    step 0 is ln 2; a few steps on one batch lower the loss."""
    if missing("bitsandbytes"):
        return Result("qlora", "skipped", "bitsandbytes is not installed here (its wheel did not travel)")
    from zephyr.configs import DataArguments, ModelArguments
    from zephyr.stages import dpo

    torch = kit.torch
    if kit.cuda:
        torch.cuda.reset_peak_memory_stats()
    data = kit.data("one-batch", kit.scale.batch, seed=2)
    model_args = ModelArguments(model_name_or_path=str(kit.model_dir("small")), load_in_4bit=True, use_peft=True,
                                dtype="bfloat16" if kit.cuda else "float32", lora_r=16, lora_alpha=16)
    data_args = DataArguments(dataset_name=str(data), long_rows="truncate", dataset_test_split=None)
    args = dpo_config(kit, kit.work / "qlora", num_train_epochs=3 if kit.smoke else 6, learning_rate=2e-4, lr_scheduler_type="constant")
    trainer, _, _ = dpo.build_trainer(model_args, data_args, args)
    quantized = sum("4bit" in type(m).__name__ or "Linear4bit" in type(m).__name__ for m in trainer.model.modules())
    trainer.train()
    got = losses(trainer)
    tolerance = 0.025 if kit.cuda else 1e-4
    ok = quantized > 0 and abs(got[0] - LN2) <= tolerance and got[-1] < got[0]
    peak = torch.cuda.max_memory_allocated() / 2**30 if kit.cuda else None
    return Result("qlora", "ok" if ok else "fail",
                  f"{quantized} 4-bit linear layers; step 0 {got[0]:.5f}, after {len(got)} steps {got[-1]:.4f}"
                  + (f"; peak {peak:.2f} GiB" if peak else ""),
                  details={"losses": got, "quantized_modules": quantized, "peak_memory_gib": peak})


@check("zero3")
def check_zero3(kit: Kit) -> Result:
    """zephyr's dDPO under DeepSpeed ZeRO-3 (the shipped accelerate config, one process) against the same run
    without it, both launched as users launch them, 4 steps on the small model. Tolerance as for dpo-step0: both
    start from the same fp32 weights, and ZeRO-3's bf16 compute and the plain run's bf16 autocast round
    differently, by well under 1 nat per sequence sum, which moves the loss by at most beta / 4 per nat: 0.025
    at beta 0.1 (bf16); fp32 on CPU: 1e-4."""
    if missing("deepspeed"):
        return Result("zero3", "skipped", "deepspeed is not installed (`python benchmarks/gpu/wheels.py fetch` "
                      "builds its wheel)")
    import socket

    data = kit.data("zero3", 4 * kit.scale.batch, seed=3)
    common = [f"model_name_or_path={kit.model_dir('small')}", "dtype=float32", f"dataset_name={data}",
              "dataset_test_split=null", "long_rows=truncate", f"max_length={kit.scale.max_length}",
              f"per_device_train_batch_size={kit.scale.batch}", "max_steps=4", "learning_rate=5e-5", "beta=0.1",
              "lr_scheduler_type=constant", "warmup_steps=0", "logging_steps=1", "save_strategy=no",
              "eval_strategy=no", "report_to=none", "seed=0", "gradient_checkpointing=false",
              f"bf16={str(kit.cuda).lower()}", "resume=false"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launches = {
        "plain": [sys.executable, "-m", "zephyr.cli", "dpo"],
        "zero3": [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(ROOT / "accelerate_configs" / "zero3.yaml"), "--num_processes", "1", "--mixed_precision",
                  "bf16" if kit.cuda else "no", "--main_process_port", str(port), "-m", "zephyr.cli", "dpo"],
    }
    got = {}
    for name, cmd in launches.items():
        out = kit.work / f"zero3-{name}"
        proc = subprocess.run([*cmd, *common, f"output_dir={out}"], capture_output=True, text=True, cwd=ROOT,
                              timeout=kit.scale.budget_s, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            tail = (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()
            return Result("zero3", "fail", f"{name} exited {proc.returncode}: {tail.splitlines()[-1:]}",
                          details={"log_tail": tail})
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        got[name] = [h["loss"] for h in history if "loss" in h]
    tolerance = 0.025 if kit.cuda else 1e-4
    worst = max(abs(a - b) for a, b in zip(got["plain"], got["zero3"], strict=True))
    ok = len(got["plain"]) == len(got["zero3"]) == 4 and worst <= tolerance
    return Result("zero3", "ok" if ok else "fail", f"4 steps, max |loss diff| against the plain run {worst:.1e} "
                  f"(tol {tolerance}); losses {got['zero3'][0]:.4f} -> {got['zero3'][-1]:.4f}",
                  details={"losses": got, "max_loss_diff": worst, "tolerance": tolerance})


@check("packed[flash_attention_2]")
def check_packed_flash(kit: Kit) -> Result:
    if not kit.cuda:
        return Result("packed[flash_attention_2]", "skipped", "needs CUDA")
    if missing("flash_attn"):
        return Result("packed[flash_attention_2]", "skipped", "flash-attn is not installed: PyPI has no wheel for "
                      "it (source only, built against the local CUDA toolkit), so it cannot travel to this machine")
    return packed_check(kit, "flash_attention_2")


@check("packed[flex_attention]")
def check_packed_flex(kit: Kit) -> Result:
    if not kit.cuda:  # flex attention compiles its kernel; on CPU that takes longer than the whole smoke run
        return Result("packed[flex_attention]", "skipped", "CUDA only in this kit (its CPU compile is too slow)")
    return packed_check(kit, "flex_attention")


# ---------------------------------------------------------------------------------------------------- report


def write_report(results: list[Result], out: Path, header: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"header": header, "checks": [asdict(r) for r in results]},
                                                   indent=2, default=str))
    lines = [f"{header}", "", "| check | status | result | s |", "|---|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.summary.replace('|', '/')} | {r.seconds:.0f} |" for r in results]
    table = "\n".join(lines) + "\n"
    (out / "gpu_check.md").write_text(table)
    return table


def run_checks(kit: Kit, only: list[str] | None) -> tuple[list[Result], str]:
    header = (f"zephyr GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{'smoke (CPU, tiny model)' if kit.smoke else 'full'}")
    results: list[Result] = []
    table = write_report(results, kit.out, header)
    for name, fn in CHECKS:
        if only and name not in only:
            continue
        start = time.perf_counter()
        if kit.elapsed() > kit.scale.budget_s:
            result = Result(name, "skipped", f"time budget of {kit.scale.budget_s:.0f} s spent")
        else:
            try:
                result = fn(kit)
            except Exception as err:  # one failure is recorded; the other checks still run
                result = Result(name, "fail", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}",
                                details={"traceback": traceback.format_exc()})
        result.seconds = time.perf_counter() - start
        print(f"[{kit.elapsed():6.0f} s] {name}: {result.status}: {result.summary}", flush=True)
        results.append(result)
        if kit.cuda:
            import gc

            gc.collect()
            kit.torch.cuda.empty_cache()
        table = write_report(results, kit.out, header)
    return results, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "benchmarks/gpu/out"),
                        help="where gpu_check.json / gpu_check.md go (default: $OUT, else benchmarks/gpu/out)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model: the same code paths in ~1 minute")
    parser.add_argument("--only", nargs="*", help="run only these checks (names as in the table)")
    parser.add_argument("--variant", choices=THROUGHPUT_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a throughput variant in its own process
        print("RESULT " + json.dumps(run_variant(args.variant, args.model, args.data, args.smoke)), flush=True)
        return 0
    os.environ.setdefault("TQDM_DISABLE", "1")
    kit = Kit(args.out.resolve(), args.smoke)
    os.environ.setdefault("ZEPHYR_CACHE", str(kit.work / "cache"))
    results, table = run_checks(kit, args.only)
    print("\n" + table)
    return 1 if any(r.status == "fail" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
