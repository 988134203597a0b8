"""Stopping and resuming training for real: SIGKILL, SIGTERM/SIGINT (one rank of two included), a crash in the
middle of a save, a full disk, nan/inf. Every interrupted run, rerun with the same command, must end exactly where
an uninterrupted run ends: the same per-step losses, learning rates and token counts, the same weights
(data order, LR schedule and RNG continue exactly; an incomplete checkpoint is never picked)."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from zephyr.checkpointing import (
    MANIFEST,
    STAGING_PREFIX,
    incomplete_reason,
    last_complete_checkpoint,
    remove_leftovers,
    staging_dir,
)
from zephyr.launch import free_port
from zephyr.stages.reliability import CheckpointSaveError, NonFiniteError
from zephyr.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
STEPS = 36  # 48 rows, global batch 4: 12 steps an epoch, 3 epochs; a checkpoint every 5 steps
SAVE_STEPS = 5


def stage_args(stage: str, tiny: Path, out: Path, processes: int = 1, *extra: str) -> list[str]:
    data = {"sft": ("sft", "train_sft"), "dpo": ("prefs", "train_prefs")}[stage]
    return [
        f"model_name_or_path={tiny / 'model'}", "dtype=float32", f"dataset_name={tiny / 'data' / data[0]}",
        f"dataset_train_split={data[1]}", "dataset_test_split=null", "max_train_samples=48", "long_rows=drop",
        "max_length=64", f"output_dir={out}", f"per_device_train_batch_size={4 // processes}",
        "num_train_epochs=3", "learning_rate=1e-3", "logging_steps=1", "save_strategy=steps",
        f"save_steps={SAVE_STEPS}", "eval_strategy=no", "report_to=none", "gradient_checkpointing=false", "seed=0",
        *extra,
    ]


def command(stage: str, tiny: Path, out: Path, processes: int = 1, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "zephyr.cli", stage, *stage_args(stage, tiny, out, processes, *extra)]
    return cmd + (["--accelerate-config", "cpu_2proc"] if processes == 2 else [])


class Run:
    """A training command in its own session (so the whole process tree can be killed), output to a file."""

    def __init__(self, cmd: list[str], out: Path) -> None:
        self.out = out
        self.log_path = out.with_name(f"{out.name}-{time.monotonic_ns()}.log")
        self.log_file = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # the same maths in every process
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def until(self, predicate, timeout: float = 300) -> None:
        start = time.time()
        while not predicate():
            assert self.proc.poll() is None, "the run ended before it could be interrupted:\n" + self.log()[-3000:]
            assert time.time() - start < timeout, "timed out"
            time.sleep(0.01)

    def kill_all(self) -> None:
        """SIGKILL to every process of the run at once, as when a machine goes down. (The ranks of a torchrun
        launch live in their own process groups, so killing the launcher's group would leave them running.)"""
        descendants = psutil.Process(self.proc.pid).children(recursive=True)
        for process in [psutil.Process(self.proc.pid), *descendants]:
            process.send_signal(signal.SIGKILL)
        psutil.wait_procs(descendants, timeout=30)  # not the child itself: Popen.wait must reap it for its status

    def ranks(self) -> dict[int, psutil.Process]:
        """The training processes under an `accelerate launch`, by RANK."""
        found = {}
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            rank = child.environ().get("RANK")
            if rank is not None and "zephyr.cli" in " ".join(child.cmdline()):
                found[int(rank)] = child
        return found

    def wait(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout=timeout)
        self.log_file.close()
        return code

    def log(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text()


def finish(cmd: list[str], out: Path) -> str:
    run = Run(cmd, out)
    assert run.wait() == 0, run.log()[-4000:]
    return run.log()


def history(out: Path) -> list[tuple]:
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"], h["learning_rate"], h.get("num_tokens")) for h in log if "loss" in h]


def assert_same_training(out: Path, ref: Path) -> None:
    """Steps, losses, learning rates and token counts of the whole run, and the final weights."""
    got, want = history(out), history(ref)
    assert [h[0] for h in got] == [h[0] for h in want] == list(range(1, STEPS + 1))
    for (step, loss, lr, tokens), (_, loss0, lr0, tokens0) in zip(got, want, strict=True):
        assert abs(loss - loss0) <= 1e-5, (step, loss, loss0)
        assert math.isclose(lr, lr0, rel_tol=1e-6, abs_tol=1e-12), (step, lr, lr0)
        assert tokens == tokens0, (step, tokens, tokens0)
    # all_results.json: the whole run's metrics (train_loss over every step, not only those after the resume)
    results, results0 = (json.loads((o / "all_results.json").read_text()) for o in (out, ref))
    timing = ("_runtime", "_per_second")  # how long this process took: not a property of the training
    assert {k for k in results if not k.endswith(timing)} == {k for k in results0 if not k.endswith(timing)}
    for key, value in results0.items():
        if key.endswith(timing):
            continue
        if isinstance(value, float):
            assert math.isclose(results[key], value, rel_tol=1e-6, abs_tol=1e-6), (key, results[key], value)
        else:
            assert results[key] == value, key
    weights, weights0 = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert weights.keys() == weights0.keys()
    for k in weights0:
        torch.testing.assert_close(weights[k], weights0[k], atol=1e-5, rtol=0)


def assert_stopped_without_final_outputs(out: Path) -> None:
    assert not (out / "model.safetensors").exists() and not (out / "all_results.json").exists()


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


@pytest.fixture
def reference(tiny_dir, run_once):
    """Uninterrupted runs, one per (stage, processes, extra settings), in subprocesses, made once per test run (the
    tests that compare with them are spread over the workers)."""

    def get(stage: str, processes: int = 1, *extra: str) -> Path:
        name = "reference-" + "-".join([stage, str(processes), *extra]).replace("=", "_")
        made = run_once(name, lambda folder: finish(command(stage, tiny_dir, folder / "out", processes, *extra),
                                                    folder / "out"), (tiny_dir,))
        return made / "out"

    return get


def resumed_past(run: Run, rows_before: int, steps: int = 2):
    """True once the rerun has logged `steps` steps of its own (metrics.jsonl keeps the killed run's lines)."""
    return lambda: "resuming from" in run.log() and len(read_metrics(run.out)) >= rows_before + steps


@pytest.mark.slow
def test_dpo_sigkill_then_sigterm_then_rerun_matches_an_uninterrupted_run(reference, tiny_dir, tmp_path):
    out = tmp_path / "dpo"
    cmd = command("dpo", tiny_dir, out)
    # 1. SIGKILL once a checkpoint exists: the rerun continues from the last complete one
    run = Run(cmd, out)
    run.until(lambda: (out / f"checkpoint-{SAVE_STEPS}").is_dir())
    run.kill_all()
    assert run.wait() == -signal.SIGKILL
    killed_at = max(checkpoint_steps(out))
    assert incomplete_reason(out / f"checkpoint-{killed_at}") is None
    # 2. SIGTERM during the rerun: the step finishes, a checkpoint is saved, the stage exits 143 saying how to go on
    rows = len(read_metrics(out))
    run = Run(cmd, out)
    run.until(resumed_past(run, rows))
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 128 + signal.SIGTERM
    log = run.log()
    assert f"resuming from {out / f'checkpoint-{killed_at}'}" in log
    stopped_at = max(checkpoint_steps(out))
    assert f"zephyr: training stopped by SIGTERM at step {stopped_at}; checkpoint saved to " \
           f"{out / f'checkpoint-{stopped_at}'}. Rerun the same command to resume from it." in log
    assert killed_at < stopped_at < STEPS
    assert_stopped_without_final_outputs(out)
    # 3. the same command again finishes the run, exactly as if nothing had happened
    log = finish(cmd, out)
    assert f"resuming from {out / f'checkpoint-{stopped_at}'}" in log
    assert_same_training(out, reference("dpo"))


CRASH_WHILE_SAVING = """
import os, signal, sys
import transformers
save_rng_state = transformers.Trainer._save_rng_state
def crash(self, output_dir):  # the model and optimizer of this checkpoint are written, the rest is not
    if self.state.global_step == 4 * {save_steps}:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_rng_state(self, output_dir)
transformers.Trainer._save_rng_state = crash
from zephyr.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sft_crash_while_saving_then_sigint_then_rerun_matches_an_uninterrupted_run(reference, tiny_dir, tmp_path):
    """Length-grouped batches, resumed in the middle of the second epoch: the order of the batches must not depend
    on the RNG state at the time the epoch starts."""
    out = tmp_path / "sft"
    cmd = command("sft", tiny_dir, out, 1, "train_sampling_strategy=group_by_length")
    # 1. killed in the middle of saving checkpoint-20: only its temporary folder exists
    run = Run([sys.executable, "-c", CRASH_WHILE_SAVING.format(save_steps=SAVE_STEPS), *cmd[3:]], out)
    assert run.wait() == -signal.SIGKILL, run.log()[-3000:]
    assert checkpoint_steps(out) == [SAVE_STEPS, 2 * SAVE_STEPS, 3 * SAVE_STEPS]
    assert (staging_dir(out, 4 * SAVE_STEPS) / f"checkpoint-{4 * SAVE_STEPS}" / "model.safetensors").is_file()
    # a checkpoint-N that lost files (say, deleted halfway by rotation) is not picked either
    broken = out / "checkpoint-99"
    broken.mkdir()
    (broken / MANIFEST).write_text(json.dumps({"step": 99, "files": {"model.safetensors": 10}}))
    # 2. SIGINT during the rerun, which resumed from checkpoint-15 and removed the half-written one
    rows = len(read_metrics(out))
    run = Run(cmd, out)
    run.until(resumed_past(run, rows))
    assert not staging_dir(out, 4 * SAVE_STEPS).exists()
    run.proc.send_signal(signal.SIGINT)
    assert run.wait() == 128 + signal.SIGINT
    log = run.log()
    assert "skipping incomplete checkpoint" in log and "model.safetensors is missing" in log
    assert f"resuming from {out / f'checkpoint-{3 * SAVE_STEPS}'}" in log
    assert "training stopped by SIGINT" in log and "Rerun the same command" in log
    assert_stopped_without_final_outputs(out)
    stopped_at = max(s for s in checkpoint_steps(out) if s != 99)
    # 3. finish
    log = finish(cmd, out)
    assert f"resuming from {out / f'checkpoint-{stopped_at}'}" in log
    assert_same_training(out, reference("sft", 1, "train_sampling_strategy=group_by_length"))


@pytest.mark.slow
def test_two_processes_sigkill_then_one_rank_sigterm_then_rerun_matches(reference, tiny_dir, tmp_path):
    """2 processes (gloo), length-grouped batches, killed in the second epoch. SIGTERM reaches rank 1 only: both
    ranks agree at the next step, save one checkpoint together and stop; no rank waits forever for the other."""
    extra = ("train_sampling_strategy=group_by_length",)
    out = tmp_path / "dpo2"
    cmd = command("dpo", tiny_dir, out, 2, *extra)
    run = Run(cmd, out)
    run.until(lambda: (out / f"checkpoint-{3 * SAVE_STEPS}").is_dir())
    run.kill_all()  # launcher and both ranks
    run.wait()
    killed_at = max(checkpoint_steps(out))
    rows = len(read_metrics(out))
    run = Run(cmd, out)
    run.until(resumed_past(run, rows))
    ranks = run.ranks()
    assert sorted(ranks) == [0, 1]
    ranks[1].send_signal(signal.SIGTERM)
    assert run.wait(timeout=300) != 0
    log = run.log()
    stops = sorted(line.split("zephyr: ")[-1] for line in log.splitlines() if "stop requested (SIGTERM)" in line)
    stopped_at = max(checkpoint_steps(out))
    assert stops == [f"rank {r} of 2: stop requested (SIGTERM), stopping after step {stopped_at}" for r in (0, 1)]
    assert log.count("zephyr: training stopped by SIGTERM") == 1  # said once, by rank 0
    assert killed_at < stopped_at < STEPS
    saved = out / f"checkpoint-{stopped_at}"
    assert (saved / "rng_state_0.pth").is_file() and (saved / "rng_state_1.pth").is_file()
    assert incomplete_reason(saved) is None
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    assert_stopped_without_final_outputs(out)
    log = finish(cmd, out)
    assert f"resuming from {saved}" in log
    assert_same_training(out, reference("dpo", 2, *extra))


@pytest.mark.slow
def test_sigterm_to_the_zephyr_command_reaches_every_rank(tiny_dir, tmp_path):
    """`zephyr sft --accelerate-config ...` runs `accelerate launch` under it: SIGTERM to zephyr is passed on
    (without that, zephyr would die and leave both ranks training on their own)."""
    out = tmp_path / "sft2"
    run = Run(command("sft", tiny_dir, out, 2), out)
    run.until(lambda: (out / f"checkpoint-{SAVE_STEPS}").is_dir())
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(timeout=300) != 0
    log = run.log()
    stopped_at = max(checkpoint_steps(out))
    for rank in (0, 1):
        assert f"rank {rank} of 2: stop requested (SIGTERM), stopping after step {stopped_at}" in log
    assert "Rerun the same command to resume from it." in log
    assert incomplete_reason(out / f"checkpoint-{stopped_at}") is None
    assert_stopped_without_final_outputs(out)


NAN_ON_RANK_1 = """
import os, sys
import torch
from zephyr.stages import sft
build_trainer = sft.build_trainer
def poisoned(*args):
    trainer, tokenizer, report = build_trainer(*args)
    if os.environ["RANK"] == "1":  # this rank's forward turns to nan at step 3
        trainer.model.model.norm.register_forward_hook(
            lambda module, inputs, output: output * float("nan") if trainer.state.global_step == 2 else output)
    return trainer, tokenizer, report
sft.build_trainer = poisoned
from zephyr.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_processes_stop_together_on_nan_in_one_rank(tiny_dir, tmp_path):
    out = tmp_path / "nan2"
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "cpu_2proc.yaml"), "--main_process_port", str(free_port()),
           str(script), "sft", *stage_args("sft", tiny_dir, out, 2, "save_steps=2")]
    run = Run(cmd, out)
    assert run.wait(timeout=300) != 0
    log = run.log()
    assert "rank 0 of 2: stopping at step 3: the loss is not finite" in log
    assert "rank 1 of 2: stopping at step 3: the loss is not finite" in log
    assert log.count("zephyr: training stopped at step 3: the loss is nan/inf on at least one process") == 1
    assert checkpoint_steps(out) == [2]
    assert f"The last checkpoint, {out / 'checkpoint-2'}, is intact." in log
    assert_stopped_without_final_outputs(out)


def run_in_process(stage: str, tiny: Path, out: Path, *extra: str):
    from zephyr.stages import dpo, sft

    return (sft if stage == "sft" else dpo).main(stage_args(stage, tiny, out, 1, *extra))


@pytest.mark.slow
def test_full_disk_while_saving_keeps_the_previous_checkpoint(reference, tiny_dir, tmp_path, monkeypatch, capsys,
                                                              caplog):
    import transformers

    out = tmp_path / "full"
    save = transformers.Trainer._save_optimizer_and_scheduler

    def disk_full(self, output_dir):
        if self.state.global_step == 2 * SAVE_STEPS:
            (Path(output_dir) / "optimizer.pt").write_bytes(b"\0" * 1000)  # what fitted before the disk filled up
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(output_dir) / "optimizer.pt"))
        return save(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", disk_full)
    previous = out / f"checkpoint-{SAVE_STEPS}"
    with pytest.raises(CheckpointSaveError) as stop:
        run_in_process("sft", tiny_dir, out, "train_sampling_strategy=group_by_length")
    message = str(stop.value)
    assert f"could not save checkpoint {out / f'checkpoint-{2 * SAVE_STEPS}'}" in message
    assert "the disk is full" in message and f"The last checkpoint, {previous}, is intact." in message
    assert "Free some space, then rerun the same command" in message
    err = capsys.readouterr().err
    assert stop.value.code == 1 and message in err and "Traceback" not in err
    assert not [r for r in caplog.records if r.exc_info]  # a full disk is logged as one line
    assert checkpoint_steps(out) == [SAVE_STEPS] and incomplete_reason(previous) is None
    assert not list(out.glob(f"{STAGING_PREFIX}*"))  # the partial save is removed: it only takes space
    assert_stopped_without_final_outputs(out)
    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", save)
    run_in_process("sft", tiny_dir, out, "train_sampling_strategy=group_by_length")
    assert_same_training(out, reference("sft", 1, "train_sampling_strategy=group_by_length"))


@pytest.mark.parametrize(("stage", "quantity"), [("sft", "loss"), ("dpo", "gradient norm")])
def test_non_finite_loss_or_gradient_stops_with_the_last_good_checkpoint(stage, quantity, tiny_dir, tmp_path,
                                                                        monkeypatch):
    from zephyr.stages import dpo, sft

    module = sft if stage == "sft" else dpo
    build_trainer = module.build_trainer
    bad_step = 5
    built = {}

    def poisoned(*args):
        trainer, tokenizer, report = build_trainer(*args)
        built["trainer"] = trainer
        model = trainer.model
        if quantity == "loss":  # the model's output becomes nan at bad_step
            model.model.norm.register_forward_hook(
                lambda m, i, output: output * float("nan") if trainer.state.global_step == bad_step - 1 else output)
        else:  # the loss stays finite, one gradient becomes inf
            model.model.norm.weight.register_hook(
                lambda g: g * float("inf") if trainer.state.global_step == bad_step - 1 else g)
        return trainer, tokenizer, report

    monkeypatch.setattr(module, "build_trainer", poisoned)
    out = tmp_path / stage
    with pytest.raises(NonFiniteError) as stop:
        run_in_process(stage, tiny_dir, out, "save_steps=2")
    message = str(stop.value)
    assert f"training stopped at step {bad_step}: the {quantity} is " in message
    assert "The optimizer step was not taken" in message
    assert f"The last checkpoint, {out / 'checkpoint-4'}, is intact." in message
    assert checkpoint_steps(out) == [2, 4]
    assert_stopped_without_final_outputs(out)
    # nothing non-finite reached the weights, in memory or in the kept checkpoint
    assert all(torch.isfinite(p).all() for p in built["trainer"].model.parameters())
    assert all(torch.isfinite(w).all() for w in load_file(out / "checkpoint-4" / "model.safetensors").values())


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    def checkpoint(step: int, files: dict[str, bytes], manifest: dict[str, int] | None) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        if manifest is not None:
            (folder / MANIFEST).write_text(json.dumps({"step": step, "files": manifest}))
        return folder

    good = checkpoint(3, {"model.safetensors": b"abcd"}, {"model.safetensors": 4})
    checkpoint(6, {"trainer_state.json": b"{}"}, None)  # written by plain transformers: complete
    checkpoint(9, {"model.safetensors": b"ab"}, {"model.safetensors": 4})  # truncated
    checkpoint(12, {"model.safetensors": b"abcd"}, {"model.safetensors": 4, "optimizer.pt": 8})  # a file missing
    checkpoint(15, {"model.safetensors": b"abcd"}, None)  # plain transformers, trainer_state.json never written
    (staging_dir(tmp_path, 18) / "checkpoint-18").mkdir(parents=True)  # a save in progress when it crashed
    (tmp_path / "tmp-checkpoint-17" / "checkpoint-17").mkdir(parents=True)  # the same, named by an older zephyr
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-6"
    assert incomplete_reason(tmp_path / "checkpoint-9") == "model.safetensors has 2 bytes, expected 4"
    assert incomplete_reason(tmp_path / "checkpoint-12") == "optimizer.pt is missing"
    assert incomplete_reason(good) is None
    assert remove_leftovers(tmp_path) == [staging_dir(tmp_path, 18), tmp_path / "tmp-checkpoint-17"]
    assert not staging_dir(tmp_path, 18).exists() and not (tmp_path / "tmp-checkpoint-17").exists()
