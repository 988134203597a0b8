"""One run per folder (zephyr/run_lock.py): a second run refuses at once, naming the first; a lock whose holder is
gone (kill -9, a lost node) is taken over, so that rerunning resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zephyr.errors import RecipeError
from zephyr.run_lock import HEARTBEAT, STALE_AFTER, FolderInUse, RunLock

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time\nfrom zephyr.run_lock import RunLock\nRunLock(sys.argv[1], 'holder').acquire()\n"
        "print('held', flush=True)\ntime.sleep(120)\n")


def hold(folder: Path) -> subprocess.Popen:
    """A real process holding the lock on `folder`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_the_lock_lives_beside_the_folder_and_goes_with_its_holder(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    path = tmp_path / ".run.zephyr-lock"
    assert lock.path == path and path.is_file() and list((tmp_path / "run").iterdir()) == []
    holder = json.loads(path.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(FolderInUse, match="already locked by this process"):
        RunLock(tmp_path / "run").acquire()
    lock.release()
    assert not path.exists()
    RunLock(tmp_path / "run").acquire().release()


def test_a_second_process_is_refused_while_the_first_runs_and_takes_over_after_kill_9(tmp_path):
    folder = tmp_path / "run"
    holder = hold(folder)
    try:
        with pytest.raises(FolderInUse) as refused:
            RunLock(folder).acquire()
        assert f"is in use by another zephyr run (pid {holder.pid} on {socket.gethostname()}, started " in \
            str(refused.value)
        assert str(refused.value).count("holder") == 1  # the command it runs
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(folder).acquire()  # its pid is gone: stale
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path):
    """Same host, the pid runs, but it is another program (it started after the lock was taken): stale."""
    folder = tmp_path / "run"
    lock_file = tmp_path / ".run.zephyr-lock"
    folder.mkdir()
    lock_file.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": 0,
                                     "process_start": 1.0, "command": "zephyr sft old"}))
    RunLock(folder).acquire().release()


def test_a_lock_from_another_host_holds_while_refreshed_and_is_stale_when_not(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lock_file = tmp_path / ".run.zephyr-lock"
    lock_file.write_text(json.dumps({"pid": 1, "host": "node-7", "started": time.time(), "process_start": 0,
                                     "command": "zephyr run pipeline.yaml"}))
    with pytest.raises(FolderInUse, match="pid 1 on node-7"):
        RunLock(folder).acquire()
    old = time.time() - STALE_AFTER - 1  # a lost node: no heartbeat for STALE_AFTER seconds
    os.utime(lock_file, (old, old))
    RunLock(folder).acquire().release()
    assert STALE_AFTER >= 3 * HEARTBEAT


def test_a_file_or_an_unwritable_folder_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecipeError, match=r"file: exists and is a file; expected a folder to write into"):
        RunLock(tmp_path / "file").acquire()
    original = Path.touch

    def read_only(path, *args, **kwargs):
        if path.name.startswith(".zephyr-write-test"):
            raise OSError(30, "Read-only file system")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", read_only)
    with pytest.raises(RecipeError, match=r"out: cannot write into this folder \(Read-only file system\)"):
        RunLock(tmp_path / "out").acquire()


@pytest.mark.slow
def test_zephyr_commands_refuse_a_locked_folder_and_resume_after_its_holder_is_killed(tiny_dir, tmp_path):
    """Whole `zephyr` processes: a training stage and `zephyr run` refuse a folder another process holds with
    one line (exit 2, no traceback); after kill -9 of the holder the same command runs."""
    out = tmp_path / "sft"
    args = [sys.executable, "-m", "zephyr.cli", "sft", f"model_name_or_path={tiny_dir / 'model'}",
            f"dataset_name={tiny_dir / 'data' / 'sft'}", "dataset_train_split=train_sft", "dataset_test_split=null",
            "max_train_samples=8", "max_length=64", "long_rows=drop", "per_device_train_batch_size=4",
            "max_steps=2", "save_strategy=no", "report_to=none", f"output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    holders = [hold(out), hold(tmp_path / "root")]
    try:
        for cmd in (args, [sys.executable, "-m", "zephyr.cli", "run", str(REPO / "recipes/tiny"), "--root",
                                str(tmp_path / "root")]):
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert "Traceback" not in proc.stderr and time.time() - t0 < 60
            assert "is in use by another zephyr run (pid " in proc.stderr.strip().splitlines()[-1]
    finally:
        for holder in holders:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "taking over" in proc.stderr and (out / "model.safetensors").is_file()
    assert not (tmp_path / ".sft.zephyr-lock").exists()  # released at the end
