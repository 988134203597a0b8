"""Several processes on CPU (gloo): a 2-process run equals one process with the same global batch
(gradient-accumulation and process-count scaling must not change the trajectory), launched the documented way: `zephyr <stage> --accelerate-config cpu_2proc`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from zephyr.launch import free_port

pytestmark = pytest.mark.slow  # every test here launches whole processes

REPO = Path(__file__).resolve().parents[1]


LABELS = {"sft": "dSFT", "dpo": "dDPO", "orpo": "ORPO", "simpo": "SimPO", "kto": "KTO", "rm": "reward model"}


def stage_args(stage: str, tiny: Path, out: Path, per_device: int) -> list[str]:
    data = ("sft", "train_sft") if stage == "sft" else ("prefs", "train_prefs")
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
    (out / "launch.log").write_text(proc.stdout + proc.stderr)
    return read_run(out)


def read_run(out: Path) -> dict:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {"log": (out / "launch.log").read_text(), "losses": [h["loss"] for h in history if "loss" in h],
            "kl": [h.get("kl") for h in history if "loss" in h], "weights": load_file(out / "model.safetensors")}


def assert_same_weights(one: dict, two: dict, lr: float = 1e-3, steps: int = 4) -> None:
    """Equal to float32 rounding (1e-5), except where Adam meets a gradient that is only rounding noise: Adam divides
    each gradient by its own running RMS, so such an element steps by up to about lr, in a direction the summation
    order decides. At most 1 in 1,000 elements may do that, and none by more than two such walks can part."""
    assert one.keys() == two.keys()
    loose = total = 0
    for k, v in one.items():
        diff = (two[k] - v).abs()
        assert diff.max().item() <= 2 * lr * steps, (k, diff.max().item())
        loose += int((diff > 1e-5).sum())
        total += diff.numel()
    assert loose <= total // 1000, f"{loose} of {total} weights differ by more than 1e-5"


@pytest.fixture
def single(tiny_dir, run_once):
    """The one-process run of a stage, made once per test run (the tests that compare with it are spread over the
    workers)."""
    def get(stage):
        made = run_once(f"single_{stage}", lambda out: launch(stage, tiny_dir, out, "single"), (tiny_dir,))
        return read_run(made)

    return get


BACKENDS = ["ddp", "fsdp"] + (["zero2", "zero3"] if importlib.util.find_spec("deepspeed") else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_two_processes_match_one_with_the_same_global_batch(stage, backend, single, tiny_dir, tmp_path):
    one = single(stage)
    two = launch(stage, tiny_dir, tmp_path / "two", backend)
    if backend == "ddp":
        assert "accelerate.commands.launch --config_file" in two["log"]  # really went through accelerate launch
    # DeepSpeed is imported only by DeepSpeed runs, bitsandbytes and wandb by none (zephyr/optional_imports.py);
    # DeepSpeed's CPU notice shows its import
    assert ("real_accelerator.py" in two["log"]) == backend.startswith("zero")
    assert "real_accelerator.py" not in one["log"]
    assert "not loading bitsandbytes, deepspeed, wandb: this run does not use them" in one["log"]
    left_out = "bitsandbytes, wandb" if backend.startswith("zero") else "bitsandbytes, deepspeed, wandb"
    assert f"not loading {left_out}: this run does not use them" in two["log"]
    assert two["log"].count(f"{LABELS[stage]} done") == 1  # only rank 0 reports
    assert len(one["losses"]) == len(two["losses"]) == 4
    assert one["losses"][0] != one["losses"][-1]
    for a, b in zip(one["losses"], two["losses"], strict=True):
        assert abs(a - b) < 1e-4, (one["losses"], two["losses"])
    assert_same_weights(one["weights"], two["weights"])


# The preference stages beyond dDPO, one launcher each; among them DDP, ZeRO-2 and ZeRO-3 (a reference copy under
# ZeRO-3 for KTO, a new reward head sharded by ZeRO-3 for the reward model).
PREFERENCE_LAUNCHES = {"orpo": "ddp", "simpo": "zero2", "kto": "zero3", "rm": "zero3"}


@pytest.mark.parametrize("stage", list(PREFERENCE_LAUNCHES))
def test_preference_stages_as_two_processes_match_one(stage, tiny_dir, tmp_path):
    """2 processes x 4 against one process taking the same optimizer steps.
    - ORPO, SimPO, reward model: one process accumulating the same two micro-batches of 4. TRL's ORPO averages
      its NLL over each micro-batch's tokens, so its loss depends on the micro-batch and 1 x 8 is another sum.
    - KTO: one process x 8, because its KL baseline is gathered over the ranks, i.e. taken over the global batch.
      TRL pairs the KL completions by rotating them within each per-device batch, so 1 x 8 and 2 x 4 pair 2 of
      the 8 differently; each loss, a mean of 1 - sigmoid(beta (r - kl)) terms, moves by at most beta / 4 per
      unit of KL, which bounds the difference by beta / 4 times the difference of the logged KL values."""
    backend = PREFERENCE_LAUNCHES[stage] if importlib.util.find_spec("deepspeed") else "ddp"
    same = ["beta=0.1"] if stage == "kto" else []
    micro = [] if stage == "kto" else ["per_device_train_batch_size=4", "gradient_accumulation_steps=2"]
    one = launch(stage, tiny_dir, tmp_path / "one", "single", *same, *micro)
    two = launch(stage, tiny_dir, tmp_path / "two", backend, *same)
    assert two["log"].count(f"{LABELS[stage]} done") == 1  # only rank 0 reports
    assert len(one["losses"]) == len(two["losses"]) == 4
    assert one["losses"][0] != one["losses"][-1]
    slack = [0.0] * 4
    if stage == "kto":
        assert one["kl"][0] == two["kl"][0] == 0.0 and all(k > 0 for k in two["kl"][1:])  # policy = reference at 0
        slack = [0.1 / 4 * abs(a - b) for a, b in zip(one["kl"], two["kl"], strict=True)]
    for a, b, s in zip(one["losses"], two["losses"], slack, strict=True):
        assert abs(a - b) <= 1e-4 + s, (one["losses"], two["losses"], one["kl"], two["kl"])
    assert_same_weights(one["weights"], two["weights"])


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
    assert_same_weights(one["weights"], two["weights"])


def ultrafeedback_rows(path: Path) -> Path:
    """Six rows in the ultrafeedback_binarized layout (prompt, prompt_id, chosen/rejected as whole conversations,
    scores), one with a system turn, answers from a few words to a few hundred (some cut at max_length)."""
    words = "the model answers each question with care and some detail about numbers cities rivers history".split()
    lengths = [(8, 12, 30), (15, 300, 250), (10, 40, 60), (20, 200, 350), (6, 5, 9), (12, 80, 120)]
    rows = []
    for i, (p, c, r) in enumerate(lengths):
        text = lambda k, s: " ".join(words[(s + 3 * j) % len(words)] for j in range(k)) + "."  # noqa: E731
        system = [{"role": "system", "content": "You are a helpful assistant."}] if i == 2 else []
        prompt = text(p, i)
        turn = [*system, {"role": "user", "content": prompt}]
        rows.append({"prompt": prompt, "prompt_id": f"p{i}", "score_chosen": 8.0, "score_rejected": 4.0,
                     "chosen": [*turn, {"role": "assistant", "content": text(c, i + 1)}],
                     "rejected": [*turn, {"role": "assistant", "content": text(r, i + 2)}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.skipif(not importlib.util.find_spec("deepspeed"), reason="needs deepspeed (in the dev extra)")
def test_zero3_dpo_on_real_schema_rows_keys_its_reference_cache_by_the_weights(tiny_dir, tmp_path, monkeypatch):
    """ZeRO-3, 2 processes, the shipped config, precomputed reference (the zephyr-7b-beta setup), on six
    ultrafeedback_binarized rows: one reference batch per rank and a short batch (the case that crashed in
    DeepSpeed's parameter coordinator). The reference cache is keyed by the gathered weights, not by ZeRO-3's empty
    shards: an unchanged model reads it, a model overwritten in place (a retrained dSFT at the same path) does not,
    and its first loss is ln 2 again (a stale cache gave 0.722)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "C"
    shutil.copytree(tiny_dir / "model", model)
    data = ultrafeedback_rows(tmp_path / "uf.jsonl")
    extra = [f"model_name_or_path={model}", f"dataset_name={data}", "dataset_train_split=train", "max_length=512",
             "long_rows=truncate", "max_steps=2", "warmup_steps=0"]

    def run(name):
        result = launch("dpo", tiny_dir, tmp_path / name, "zero3", *extra)
        stats = json.loads((tmp_path / name / "reference_logps.json").read_text())["train"]
        return result["losses"], stats["computed"]

    first, computed = run("first")
    assert computed and len(first) == 2 and abs(first[0] - 0.693147) < 1e-5
    again, computed = run("again")
    assert not computed and again == first
    weights = load_file(model / "model.safetensors")
    save_file({k: (v * 1.5 if v.dim() == 2 else v).contiguous() for k, v in weights.items()},
              model / "model.safetensors", metadata={"format": "pt"})
    changed, computed = run("changed")
    assert computed, "the reference pass was read from the cache of other weights"
    assert abs(changed[0] - 0.693147) < 1e-5 and changed != first
    assert torch.isfinite(torch.tensor(changed)).all()
