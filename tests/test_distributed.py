"""Several processes on CPU (gloo): a 2-process run equals one process with the same global batch
(REFERENCE.md 5, pitfall 10), launched the documented way: `zephyr <stage> --accelerate-config cpu_2proc`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zephyr.launch import free_port

pytestmark = pytest.mark.slow  # every test here launches whole processes

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


def launch(stage: str, tiny: Path, out: Path, backend: str, *extra: str) -> dict:
    """Global batch 8 either way: 1 process x 8, or 2 processes x 4 (DDP, FSDP, DeepSpeed ZeRO-2 or ZeRO-3)."""
    processes = 1 if backend == "single" else 2
    args = [*stage_args(stage, tiny, out, 8 // processes), *extra]
    if backend == "single":
        cmd = [sys.executable, "-m", "zephyr.cli", stage, *args]
    elif backend == "ddp":  # the zephyr shortcut for `accelerate launch --config_file ...`
        cmd = [sys.executable, "-m", "zephyr.cli", stage, *args, "--accelerate-config", "cpu_2proc"]
    else:  # the shipped GPU configs, with the process count and precision set for this CPU machine
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / f"{backend}.yaml"), "--num_processes", "2",
               "--mixed_precision", "no", "--main_process_port", str(free_port()), "-m", "zephyr.cli", stage, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {"log": proc.stdout + proc.stderr, "losses": [h["loss"] for h in history if "loss" in h],
            "weights": load_file(out / "model.safetensors")}


@pytest.fixture(scope="module")
def single(tiny_dir, tmp_path_factory):
    runs = {}

    def get(stage):
        if stage not in runs:
            runs[stage] = launch(stage, tiny_dir, tmp_path_factory.mktemp(f"single_{stage}"), "single")
        return runs[stage]

    return get


BACKENDS = ["ddp", "fsdp"] + (["zero2", "zero3"] if importlib.util.find_spec("deepspeed") else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_two_processes_match_one_with_the_same_global_batch(stage, backend, single, tiny_dir, tmp_path):
    one = single(stage)
    two = launch(stage, tiny_dir, tmp_path / "two", backend)
    if backend == "ddp":
        assert "accelerate.commands.launch --config_file" in two["log"]  # really went through accelerate launch
    assert two["log"].count(f"{'dSFT' if stage == 'sft' else 'dDPO'} done") == 1  # only rank 0 reports
    assert len(one["losses"]) == len(two["losses"]) == 4
    assert one["losses"][0] != one["losses"][-1]
    for a, b in zip(one["losses"], two["losses"], strict=True):
        assert abs(a - b) < 1e-4, (one["losses"], two["losses"])
    assert one["weights"].keys() == two["weights"].keys()
    for k, v in one["weights"].items():
        torch.testing.assert_close(two["weights"][k], v, atol=1e-5, rtol=0)


def test_slurm_launcher_runs_a_stage(tiny_dir, tmp_path):
    """scripts/launch_slurm.sh with stand-ins for srun and scontrol (one node, two CPU processes)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho 127.0.0.1\n")
    # srun drops its own options and runs the command as node rank 0
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                  'SLURM_PROCID=0 exec "$@"\n')
    for f in ("scontrol", "srun"):
        (bin_dir / f).chmod(0o755)
    out = tmp_path / "slurm_dpo"
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node1", "GPUS_PER_NODE": "2", "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(free_port())}
    proc = subprocess.run(["bash", "scripts/launch_slurm.sh", "dpo", str(REPO / "recipes" / "tiny" / "dpo.yaml"),
                           "cpu_2proc", *stage_args("dpo", tiny_dir, out, 4)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "dpo on 1 node(s) x 2 processes" in proc.stdout
    assert len([h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]) == 4
    assert (out / "model.safetensors").is_file()


@pytest.mark.skipif(not importlib.util.find_spec("deepspeed"), reason="needs deepspeed (in the dev extra)")
def test_zero3_frozen_reference_copy(single, tiny_dir, tmp_path):
    """precompute_ref_log_probs off: the reference copy is sharded by ZeRO-3 for inference and never trained,
    so the run still matches one process whose reference log-probs were computed once up front."""
    one = single("dpo")
    two = launch("dpo", tiny_dir, tmp_path / "zero3_ref", "zero3", "precompute_ref_log_probs=false")
    for a, b in zip(one["losses"], two["losses"], strict=True):
        assert abs(a - b) < 1e-4, (one["losses"], two["losses"])
    for k, v in one["weights"].items():
        torch.testing.assert_close(two["weights"][k], v, atol=1e-5, rtol=0)
