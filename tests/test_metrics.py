"""The metrics a stage writes are what they say: means over the pairs, rows or tokens of the whole eval set
whatever the batching, at full precision, checked against an independent computation from the saved policy and
reference (dDPO) and against the eval set in one batch (every training stage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import process_state_kept, sequence_logps
from transformers import AutoModelForCausalLM

from zephyr.recipe import parse_stage_args
from zephyr.stages import dpo

BETA = 0.1


def rewards_by_hand(policy, reference, rows) -> dict[str, float]:
    """Each pair alone, unpadded, plain forwards: beta * (policy - reference) log-prob of each answer."""
    chosen, rejected = [], []
    with torch.no_grad():
        for row in rows:
            for side, out in (("chosen_ids", chosen), ("rejected_ids", rejected)):
                ids = torch.tensor([row["prompt_ids"] + row[side]])
                mask = torch.zeros_like(ids)
                mask[0, len(row["prompt_ids"]):] = 1
                ones = torch.ones_like(ids)
                out.append(BETA * float(sequence_logps(policy, ids, ones, mask) - sequence_logps(reference, ids, ones,
                                                                                                   mask)))
    c, r = torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)
    return {"eval_rewards/chosen": float(c.mean()), "eval_rewards/rejected": float(r.mean()),
            "eval_rewards/accuracies": float((c > r).double().mean()), "eval_rewards/margins": float((c - r).mean())}


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_dpo_eval_reward_metrics_are_per_pair_means_at_full_precision(processes, tiny_dir, tmp_path, monkeypatch):
    """99 eval pairs in batches of 32 (32/32/32/3; under 2 processes 64/35, the last batch evened out by a
    repeated pair): TRL's mean of batch means weighs the last pairs like full batches and counts the repeat.
    zephyr's metrics equal the per-pair means of rewards recomputed pair by pair, and all_results.json keeps them
    at full precision."""
    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "dpo"
    argv = [f"model_name_or_path={tiny_dir / 'model'}", "dtype=float32", f"dataset_name={tiny_dir / 'data' / 'prefs'}",
            "dataset_train_split=train_prefs", "dataset_test_split=test_prefs", "max_train_samples=32",
            "max_eval_samples=99", "long_rows=drop", "max_length=128",
            f"per_device_train_batch_size={8 // processes}", "per_device_eval_batch_size=32", "max_steps=4",
            "learning_rate=5e-3", "warmup_steps=0", f"beta={BETA}", "eval_strategy=no", "save_strategy=no",
            "report_to=none", "gradient_checkpointing=false", f"output_dir={out}", "seed=0"]
    if processes == 1:
        with process_state_kept():
            dpo.main(argv)
    else:  # the documented way: `zephyr dpo ... --accelerate-config cpu_2proc`
        proc = subprocess.run([sys.executable, "-m", "zephyr.cli", "dpo", *argv, "--accelerate-config", "cpu_2proc"],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    # the same eval rows as the run, prepared again (from the cache) the way the run prepared them
    trainer, _, _ = dpo.build_trainer(*parse_stage_args(argv, dpo.CONFIG_CLASSES, "dpo"))
    rows = trainer.eval_dataset
    assert len(rows) % 2 and len(rows) > 64  # a short last batch, uneven across 2 processes
    policy = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.float32).eval()
    want = rewards_by_hand(policy, reference, rows)
    assert 0.05 < want["eval_rewards/accuracies"] < 0.95  # trained: not all ties at 0
    for key, value in want.items():  # fp32 forwards, packed against unpadded: ~1e-6 on log-probs of ~100 tokens
        assert abs(results[key] - value) < 2e-5, (key, results[key], value)
    assert any(round(results[key], 4) != results[key] for key in want)  # full precision, not 4 decimals


# ------------------------------------------------------------------------------- every trainer, every metric
SIZE_INDEPENDENT = {  # stage: the metrics TRL logs as per-batch values that WeightedMetrics weighs
    "sft": ("eval_entropy", "eval_mean_token_accuracy"),
    "dpo": ("eval_rewards/chosen", "eval_rewards/accuracies", "eval_logps/rejected", "eval_entropy",
            "eval_logits/chosen", "eval_logits/rejected", "eval_mean_token_accuracy"),
    "kto": ("eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins", "eval_logps/chosen",
            "eval_entropy", "eval_logits/chosen", "eval_logits/rejected"),
    "rm": ("eval_accuracy", "eval_margin", "eval_mean_reward", "eval_min_reward", "eval_max_reward"),
    "orpo": ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_nll_loss",
             "eval_log_odds_ratio"),
    "simpo": ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/chosen", "eval_nll_loss"),
}


@pytest.mark.parametrize("stage", sorted(SIZE_INDEPENDENT))
def test_every_logged_metric_is_the_same_whatever_the_eval_batch_size(stage, tiny_dir, tmp_path, monkeypatch):
    """After a few steps away from the reference, the eval set in one batch (TRL's own per-batch mean is then the
    mean over every pair, row or answer token) and in batches of 3, 3, 3 and 2 (answers of unequal length): every
    metric a trainer logs is the same, to float32 rounding, and the min and max are those of the whole set."""
    from helpers import stage_configs

    from zephyr.stages import dpo as dpo_stage
    from zephyr.stages import kto, orpo, rm, sft, simpo

    module = {"sft": sft, "dpo": dpo_stage, "kto": kto, "rm": rm, "orpo": orpo, "simpo": simpo}[stage]
    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "cache"))
    eval_rows = 11
    configs = stage_configs(stage, tiny_dir, tmp_path, max_steps=3, learning_rate=1e-2, warmup_steps=0,
                            max_eval_samples=eval_rows, per_device_eval_batch_size=eval_rows)
    with process_state_kept():
        trainer, _, _ = module.build_trainer(*configs)
        trainer.train()
        rows = len(trainer.eval_dataset)
        assert rows >= 10 and rows % 3  # a short last batch
        whole = trainer.evaluate()
        trainer.args.per_device_eval_batch_size = 3
        batched = trainer.evaluate()
    for key in SIZE_INDEPENDENT[stage]:
        # float32 sums over a few hundred values, padded to other widths: ~1e-6 relative; a batch mean off
        # by the last short batch moves these by > 1e-3
        assert batched[key] == pytest.approx(whole[key], rel=2e-5, abs=2e-6), (key, batched[key], whole[key])
    moved = [k for k in SIZE_INDEPENDENT[stage] if abs(whole[k]) > 1e-4]
    assert moved, whole  # trained away from the reference: the metrics are not all at a tie value
