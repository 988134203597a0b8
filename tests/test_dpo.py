"""dDPO: the step-0 invariant, a frozen reference, gradient-accumulation equivalence, LoRA, end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import stage_configs, state_snapshot
from transformers import AutoModelForCausalLM, AutoTokenizer

from zephyr.stages import dpo


def test_step0_loss_is_ln2_with_policy_equal_to_reference(tiny_dir, tmp_path):
    trainer, _, _ = dpo.build_trainer(*stage_configs("dpo", tiny_dir, tmp_path))
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    metrics = trainer.evaluate()
    assert abs(metrics["eval_loss"] - math.log(2)) < 1e-6
    assert metrics["eval_rewards/chosen"] == 0.0
    assert metrics["eval_rewards/rejected"] == 0.0
    assert metrics["eval_rewards/margins"] == 0.0
    assert metrics["eval_rewards/accuracies"] == 0.0  # strict >: ties are not wins


def test_dropout_is_disabled_so_step0_holds(tiny_dir, tmp_path):
    """Pitfall 11: with dropout on, policy and reference disagree at step 0."""
    trainer, _, _ = dpo.build_trainer(*stage_configs("dpo", tiny_dir, tmp_path))
    for model in (trainer.model, trainer.ref_model):
        assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
        assert model.config.attention_dropout == 0


def test_training_moves_policy_and_never_the_reference(tiny_dir, tmp_path):
    trainer, _, _ = dpo.build_trainer(*stage_configs("dpo", tiny_dir, tmp_path, max_steps=4, learning_rate=1e-3))
    ref_before, policy_before = state_snapshot(trainer.ref_model), state_snapshot(trainer.model)
    trainer.train()
    ref_after, policy_after = state_snapshot(trainer.ref_model), state_snapshot(trainer.model)
    assert all(torch.equal(ref_before[k], ref_after[k]) for k in ref_before)  # bitwise unchanged
    assert not trainer.ref_model.training  # pitfall 8: reference in eval mode
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())
    changed = [k for k in policy_before if not torch.equal(policy_before[k], policy_after[k])]
    assert len(changed) == len(policy_before)


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_gradient_accumulation_matches_larger_batch(tiny_dir, tmp_path):
    """Pitfall 10: per-device 4 x GA 1 and per-device 2 x GA 2 give the same trajectory (fp32).

    Plain SGD, so an update is linear in the gradient: a GA scaling bug (a gradient 2x too large or small) changes
    every update by 100%. Adam would hide it (its step ignores the gradient's scale) and would turn rounding noise
    in near-zero gradients into whole-lr steps, so its weights can differ by ~lr on any CPU. What is left here is
    summation order: fp32 sums of a few micro-batch terms agree to ~1e-6 relative, kept after five steps; the
    gate, 1e-4 of the largest update, is 100x above that and 10^4x below a scaling bug."""
    runs = {}
    for pdb, ga in ((4, 1), (2, 2)):
        configs = stage_configs("dpo", tiny_dir, tmp_path / f"{pdb}x{ga}", max_steps=5, learning_rate=0.1,
                                optim="sgd", per_device_train_batch_size=pdb, gradient_accumulation_steps=ga)
        trainer, _, _ = dpo.build_trainer(*configs)
        before = state_snapshot(trainer.model)
        trainer.train()
        after = state_snapshot(trainer.model)
        runs[(pdb, ga)] = (_losses(trainer), {k: after[k] - before[k] for k in before})
    (losses_a, updates_a), (losses_b, updates_b) = runs[(4, 1)], runs[(2, 2)]
    assert len(losses_a) == len(losses_b) == 5
    assert losses_a[0] != losses_a[-1]  # it trained
    for a, b in zip(losses_a, losses_b, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (losses_a, losses_b)
    largest = max(float(u.abs().max()) for u in updates_a.values())
    assert largest > 0
    for k in updates_a:
        torch.testing.assert_close(updates_a[k], updates_b[k], atol=1e-4 * largest, rtol=0)


@pytest.mark.parametrize("loss_type", [["sigmoid"], ["ipo"], ["hinge"], ["sigmoid", "sft"]])
def test_loss_types_and_beta_reach_the_trainer(tiny_dir, tmp_path, loss_type):
    trainer, _, _ = dpo.build_trainer(
        *stage_configs("dpo", tiny_dir, tmp_path, loss_type=loss_type, beta=0.25, max_steps=2)
    )
    assert trainer.args.loss_type == loss_type and trainer.args.beta == 0.25
    trainer.train()
    assert all(math.isfinite(x) for x in _losses(trainer))


def test_lora_reference_is_the_adapter_disabled_base(tiny_dir, tmp_path):
    configs = stage_configs("dpo", tiny_dir, tmp_path, use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                            max_steps=3, learning_rate=1e-2)
    trainer, _, _ = dpo.build_trainer(*configs)
    assert trainer.ref_model is None  # no second copy in memory
    base_before = {k: v.clone() for k, v in trainer.model.state_dict().items() if "lora_" not in k}
    assert abs(trainer.evaluate()["eval_loss"] - math.log(2)) < 1e-6
    trainer.train()
    base_after = {k: v for k, v in trainer.model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)


def test_precompute_ref_log_probs_gives_same_step0(tiny_dir, tmp_path):
    trainer, _, _ = dpo.build_trainer(*stage_configs("dpo", tiny_dir, tmp_path, precompute_ref_log_probs=True))
    assert trainer.ref_model is None
    assert abs(trainer.evaluate()["eval_loss"] - math.log(2)) < 1e-6


def test_precomputed_reference_equals_frozen_copy_and_is_reused_across_runs(tiny_dir, tmp_path, monkeypatch):
    """Zephyr's default (reference log-probs once, cached on disk) gives the losses of a frozen copy run every
    step (pitfall 9: aligned after shuffling), and a second run that differs in unrelated settings reuses it."""
    calls = []
    original = dpo.ZephyrDPOTrainer.compute_ref_log_probs
    monkeypatch.setattr(dpo.ZephyrDPOTrainer, "compute_ref_log_probs",
                        lambda self, model, inputs: calls.append(len(inputs["input_ids"])) or original(
                            self, model, inputs))
    runs = {}
    for name, extra in (("copy", {"precompute_ref_log_probs": False}), ("cached", {}),
                        ("again", {"learning_rate": 2e-3, "beta": 0.2})):
        calls.clear()
        settings = {"max_steps": 5, "learning_rate": 1e-3, "precompute_ref_log_probs": True, "max_train_samples": 28,
                    "max_eval_samples": 5,
                    **extra}
        configs = stage_configs("dpo", tiny_dir, tmp_path / name, **settings)
        trainer, _, _ = dpo.build_trainer(*configs)
        trainer.train()
        runs[name] = (_losses(trainer), len(calls))
    (copy_losses, _), (cached_losses, cached_calls) = runs["copy"], runs["cached"]
    assert cached_calls == 7 + 1  # 28 train rows in batches of 4, 5 eval rows in one batch, before training
    for a, b in zip(copy_losses, cached_losses, strict=True):
        assert abs(a - b) < 1e-5
    assert runs["again"][1] == 0  # other learning rate and beta, same data and reference: nothing recomputed


def test_dpo_end_to_end_writes_a_model_that_generates(tiny_dir, tmp_path):
    out = tmp_path / "dpo_run"
    args = ["--model_name_or_path", str(tiny_dir / "model"), "--dataset_name", str(tiny_dir / "data" / "prefs"),
            "--dataset_train_split", "train_prefs", "--dataset_test_split", "test_prefs", "--max_eval_samples", "16",
            "--max_train_samples", "320", "--long_rows", "drop", "--dtype", "float32", "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-2", "--num_train_epochs", "1",
            "--logging_steps", "1", "--gradient_checkpointing", "false", "--save_strategy", "epoch",
            "--eval_strategy", "no", "--max_length", "128"]
    metrics = dpo.main(args)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 40
    assert abs(losses[0] - math.log(2)) < 1e-4  # first step starts from policy == reference
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05  # and falls
    accuracies = [h["rewards/accuracies"] for h in history if "rewards/accuracies" in h]
    assert sum(accuracies[-10:]) / 10 > 0.6  # chosen now out-scores rejected on most training pairs
    assert "eval_rewards/accuracies" in metrics and "eval_rewards/margins" in metrics
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja", "config.json", "README.md",
                 "all_results.json", "zephyr_recipe.yaml", "data_report.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) or [p.name for p in out.glob("*.bin")] == ["training_args.bin"]
    _generates(out)


def _generates(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:]
    assert 1 <= len(new) <= 8
    assert (new != tok.pad_token_id).any()
