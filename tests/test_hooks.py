"""Contract tests for zephyr/hooks.py: the library internals it relies on, pinned so an upgrade fails here."""

from __future__ import annotations

import inspect
import json

import torch

from tests.helpers import stage_configs
from zephyr.hooks import fast_module_hash, trl_reference_hash
from zephyr.stages import dpo


def test_trl_still_keys_its_reference_cache_with_module_level_hash_module():
    from trl import DPOTrainer
    from trl.trainer import dpo_trainer

    assert callable(dpo_trainer.hash_module)
    source = inspect.getsource(DPOTrainer.__init__)
    assert "self._precompute_model_hash = (" in source and "hash_module(self.ref_model or self.model)" in source
    # the methods zephyr overrides, with the parameters it passes on
    assert list(inspect.signature(DPOTrainer.compute_ref_log_probs).parameters) == ["self", "model", "inputs"]
    assert list(inspect.signature(DPOTrainer._precompute_ref_logps).parameters) == [
        "self", "dataset", "name", "batch_size"]
    assert list(inspect.signature(DPOTrainer._compute_loss).parameters) == [
        "self", "model", "inputs", "return_outputs"]


def test_fast_module_hash_tells_weights_apart():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    same = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    same.load_state_dict(model.state_dict())
    key = fast_module_hash(model)
    assert len(key) == 32 and key == fast_module_hash(same)
    with torch.no_grad():
        same[1].weight[0, 0] = torch.nextafter(same[1].weight[0, 0], torch.tensor(1.0))  # one ulp in one weight
    assert fast_module_hash(same) != key
    assert fast_module_hash(model.to(torch.bfloat16)) != key  # the dtype is part of the identity


def test_trainer_uses_the_fast_key_and_restores_trl(tiny_dir, tmp_path):
    from trl.trainer import dpo_trainer

    original = dpo_trainer.hash_module
    trainer, _, _ = dpo.build_trainer(*stage_configs("dpo", tiny_dir, tmp_path, precompute_ref_log_probs=True,
                                                     max_train_samples=8, dataset_test_split=None))
    assert dpo_trainer.hash_module is original
    assert trainer._precompute_model_hash == fast_module_hash(trainer.model)
    with trl_reference_hash(lambda module: "x"):
        assert dpo_trainer.hash_module(None) == "x"
    assert dpo_trainer.hash_module is original


def test_packed_reference_pass_equals_the_padded_one(tiny_dir, tmp_path, monkeypatch):
    """The reference pass runs packed (zephyr/packing.py); its cached log-probs equal TRL's padded pass (fp32)."""
    logps = {}
    for packed in (True, False):
        monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / f"cache-{packed}"))  # both passes computed, not read
        trainer, _, _ = dpo.build_trainer(*stage_configs(
            "dpo", tiny_dir, tmp_path / str(packed), precompute_ref_log_probs=True, packed_forward=packed,
            max_train_samples=12, dataset_test_split=None))
        ds = trainer.train_dataset
        assert json.loads((tmp_path / str(packed) / "dpo_out" / "reference_logps.json").read_text())["train"]["computed"]
        logps[packed] = torch.tensor([ds["ref_chosen_logps"], ds["ref_rejected_logps"]])
    assert logps[True].shape == (2, 12)
    torch.testing.assert_close(logps[True], logps[False], atol=1e-4, rtol=1e-6)
