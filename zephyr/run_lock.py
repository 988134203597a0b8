"""One run per folder: a lock file that a second run refuses on, and that a dead run leaves for the next to take.

Two runs writing one folder (two `zephyr run` with the same root, two stages with the same output_dir) interleave
their checkpoints and outputs without an error. So a run takes the folder's lock before it writes there: a file
beside it, `.<folder name>.zephyr-lock` (beside, not inside, so that nothing that publishes or copies the folder
takes the lock along), created exclusively (one of two simultaneous starts wins), holding who took it (pid,
host, start time, command).

A lock whose holder is gone is stale, and taken over, so that rerunning after a crash resumes as before:
- same host: the pid no longer runs, or runs another program (its start time is not the lock's);
- another host (a lost node on a shared file system): the holder refreshes the lock file's modification time
  every HEARTBEAT seconds; one untouched for STALE_AFTER seconds is stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zephyr.errors import RecipeError

LOCK_SUFFIX = ".zephyr-lock"
HEARTBEAT = 30.0  # seconds between refreshes of the lock file's modification time
STALE_AFTER = 4 * HEARTBEAT  # a lock from another host untouched this long has lost its holder
GRACE = 3.0  # seconds a live holder is given to finish exiting (a run just stopped) before a second run refuses


class FolderInUse(RecipeError):
    """Another live run holds the folder."""


def _process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if it does not run."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _holder_alive(holder: dict[str, Any], lock: Path) -> bool:
    if holder.get("host") == socket.gethostname():
        started = _process_start(int(holder.get("pid", -1)))
        return started is not None and abs(started - float(holder.get("process_start", 0))) < 2.0
    try:
        return time.time() - lock.stat().st_mtime < STALE_AFTER
    except FileNotFoundError:
        return False


def _describe(holder: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {started}: "
            f"{holder.get('command', '?')}")


def _read(lock: Path) -> dict[str, Any] | None:
    try:
        return json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: judged by its age below


class RunLock:
    """The lock on one folder, held by this process until `release()`."""

    def __init__(self, folder: str | Path, command: str | None = None) -> None:
        self.folder = Path(folder).absolute()
        self.path = self.folder.parent / f".{self.folder.name}{LOCK_SUFFIX}"
        self.command = command or " ".join(["zephyr", *sys.argv[1:]])[:300]
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> RunLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RecipeError(f"{self.folder}: exists and is a file; expected a folder to write into") from None
        except OSError as err:
            raise RecipeError(f"{self.folder}: cannot create this folder ({err.strerror}); choose another output "
                              "folder") from None
        probe = self.folder / f".zephyr-write-test-{os.getpid()}"
        try:  # a read-only folder or file system: say so now, not in a traceback at the first save
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise RecipeError(f"{self.folder}: cannot write into this folder ({err.strerror}); choose another "
                              "output folder") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "process_start": _process_start(os.getpid()), "command": self.command}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as err:  # the parent folder is read-only
                raise RecipeError(f"{self.folder}: cannot write its lock {self.path} ({err.strerror}); choose "
                                  "another output folder") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._beat = threading.Thread(target=self._heartbeat, name="zephyr-lock", daemon=True)
            self._beat.start()
            return self
        raise FolderInUse(f"{self.folder}: could not take its lock {self.path}")

    def _take_over_if_stale(self) -> None:
        holder = _read(self.path)
        if holder is None:
            return  # released meanwhile: try again
        if holder and holder.get("pid") == os.getpid() and _holder_alive(holder, self.path):
            raise FolderInUse(f"{self.folder} is already locked by this process")
        if self._still_held(holder):
            who = _describe(holder) if holder else "a run that is starting"
            raise FolderInUse(f"{self.folder} is in use by another zephyr run ({who}). Wait for it to end or stop "
                              f"it; a lock left by a run that no longer runs is taken over by the next one")
        # stale: move it aside; of two processes doing this at once only one rename succeeds
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, aside)
            print(f"zephyr: taking over {self.path} from a run that no longer runs"
                  + (f" ({_describe(holder)})" if holder else ""), file=sys.stderr)
            aside.unlink()

    def _still_held(self, holder: dict[str, Any]) -> bool:
        """Whether the lock's holder still runs, after GRACE seconds for one that is exiting (a run stopped a
        moment ago, whose last process is still releasing)."""
        deadline = time.time() + GRACE
        while True:
            alive = _holder_alive(holder, self.path) if holder else self._young()
            if not alive or time.time() >= deadline or not self.path.exists():
                return alive and self.path.exists()
            time.sleep(0.25)

    def _young(self) -> bool:
        try:
            return time.time() - self.path.stat().st_mtime < 10.0
        except FileNotFoundError:
            return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        holder = _read(self.path)
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@contextlib.contextmanager
def locked(folder: str | Path, enabled: bool = True) -> Iterator[RunLock | None]:
    """Hold the lock on `folder` for the block (no lock when not `enabled`: ranks other than the main one)."""
    if not enabled:
        yield None
        return
    lock = RunLock(folder).acquire()
    try:
        yield lock
    finally:
        lock.release()
