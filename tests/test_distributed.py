"""Several processes on CPU (gloo): a 2-process run equals one process with the same global batch
(REFERENCE.md 5, pitfall 10), launched the documented way: `zephyr <stage> --accelerate-config cpu_2proc`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def stage_args(stage: str, tiny: Path, out: Path, per_device: int) -> list[str]:
    data = {"sft": ("sft", "train_sft"), "dpo": ("prefs", "train_prefs")}[stage]
    return [
        f"model_name_or_path={tiny / 'model'}", "dtype=float32", f"dataset_name={tiny / 'data' / data[0]}",
        f"dataset_train_split={data[1]}", "dataset_test_split=null", "max_train_samples=64", "long_rows=drop",
        "max_length=64", f"output_dir={out}", f"per_device_train_batch_size={per_device}", "max_steps=4",
        "learning_rate=1e-3", "logging_steps=1", "save_strategy=no", "eval_strategy=no", "report_to=none",
        "gradient_checkpointing=false", "seed=0", "resume=false",
    ]


def launch(stage: str, tiny: Path, out: Path, processes: int) -> dict:
    """Global batch 8 either way: 1 process x 8, or 2 processes x 4."""
    extra = ["--accelerate-config", "cpu_2proc"] if processes == 2 else []
    cmd = [sys.executable, "-m", "zephyr.cli", stage, *stage_args(stage, tiny, out, 8 // processes), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {"log": proc.stdout + proc.stderr, "losses": [h["loss"] for h in history if "loss" in h],
            "weights": load_file(out / "model.safetensors")}


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_two_processes_match_one_with_the_same_global_batch(stage, tiny_dir, tmp_path):
    one = launch(stage, tiny_dir, tmp_path / "one", processes=1)
    two = launch(stage, tiny_dir, tmp_path / "two", processes=2)
    assert "accelerate.commands.launch --config_file" in two["log"]  # really went through accelerate launch
    assert two["log"].count(f"{'dSFT' if stage == 'sft' else 'dDPO'} done") == 1  # only rank 0 reports
    assert len(one["losses"]) == len(two["losses"]) == 4
    assert one["losses"][0] != one["losses"][-1]
    for a, b in zip(one["losses"], two["losses"], strict=True):
        assert abs(a - b) < 1e-4, (one["losses"], two["losses"])
    for k, v in one["weights"].items():
        torch.testing.assert_close(two["weights"][k], v, atol=1e-5, rtol=0)
