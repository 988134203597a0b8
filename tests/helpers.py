"""Small helpers shared by the training tests."""

from __future__ import annotations

import torch

from zephyr.evaluation.reward_accuracy import sequence_logps  # noqa: F401  (re-exported for tests)


def state_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def stage_configs(stage: str, tiny, tmp_path, **overrides):
    """(ModelArguments, DataArguments, Zephyr*Config) for a short run on the embedded data."""
    from zephyr.recipe import build_configs
    from zephyr.stages import dpo, sft

    data = {"sft": ("sft", "train_sft", "test_sft"), "dpo": ("prefs", "train_prefs", "test_prefs")}[stage]
    values = {
        "model_name_or_path": str(tiny / "model"),
        "dtype": "float32",
        "dataset_name": str(tiny / "data" / data[0]),
        "dataset_train_split": data[1],
        "dataset_test_split": data[2],
        "max_train_samples": 32,
        "max_eval_samples": 8,
        "long_rows": "drop",
        "output_dir": str(tmp_path / f"{stage}_out"),
        "max_length": 128,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "seed": 0,
    }
    if stage == "dpo":
        values["precompute_ref_log_probs"] = False  # most tests look at the frozen copy itself
    values.update(overrides)
    classes = sft.CONFIG_CLASSES if stage == "sft" else dpo.CONFIG_CLASSES
    return build_configs(values, classes)
