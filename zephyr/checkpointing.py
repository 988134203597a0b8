"""Checkpoints on disk: written aside, published by one rename, chosen for resume only when complete.

transformers writes `checkpoint-N` in place and picks the highest `checkpoint-N` to resume from, so a run killed
mid-save (or stopped by a full disk) leaves a half-written folder that the next run loads. Here a checkpoint is
written under `_tmp-checkpoint-N/` (a name transformers' `^checkpoint-\\d+$` never matches, and which its Hub
uploads skip: they ignore `_*`), gets a manifest of its files, and is renamed to `checkpoint-N` only when every
rank has finished writing. Resume takes the newest checkpoint whose manifest still holds, so a folder
half-deleted by checkpoint rotation is skipped too.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger("zephyr")

# A leading "_": transformers' uploads of output_dir (push_to_hub) ignore `_*`, so a background upload that starts
# while a checkpoint is being written or replaced never sends these folders (optimizer state included).
STAGING_PREFIX = "_tmp-checkpoint-"  # being written
TRASH_PREFIX = "_deleting-checkpoint-"  # being replaced (a checkpoint saved twice at one step)
LEGACY_LEFTOVER_PREFIXES = ("tmp-checkpoint-", "deleting-checkpoint-")  # the same, named by older zephyr versions
MANIFEST = "zephyr_checkpoint.json"
LEGACY_LAST_FILE = "trainer_state.json"  # transformers writes it last: a checkpoint without our manifest needs it
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "storagefull")


def staging_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"{STAGING_PREFIX}{step}"


def write_manifest(checkpoint: Path, step: int) -> None:
    """Record every file and its size; `incomplete_reason` checks them on resume."""
    files = {str(p.relative_to(checkpoint)): p.stat().st_size for p in sorted(checkpoint.rglob("*")) if p.is_file()}
    (checkpoint / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, final: Path) -> None:
    """Make the fully written `staged` folder visible as `final` in one rename (after flushing it to disk, so a
    power cut cannot leave a published checkpoint with missing data)."""
    for path in staged.rglob("*"):
        if path.is_file():
            _fsync(path)
    if final.exists():  # saved twice at one step (the step-end and epoch-end saves): keep the newer one
        trash = final.with_name(f"{TRASH_PREFIX}{final.name.split('-')[-1]}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(staged, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staged, final)
    _fsync(final.parent)


def incomplete_reason(checkpoint: Path) -> str | None:
    """None when `checkpoint` is complete, else what is wrong with it."""
    manifest = checkpoint / MANIFEST
    if not manifest.is_file():
        return None if (checkpoint / LEGACY_LAST_FILE).is_file() else f"no {MANIFEST} or {LEGACY_LAST_FILE}"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"unreadable {MANIFEST} ({err})"
    for name, size in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, expected {size}"
    return None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders in `run_dir`, newest step first."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def last_complete_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; incomplete newer ones are skipped with a warning."""
    if not Path(run_dir).is_dir():
        return None
    for checkpoint in checkpoints(run_dir):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            return checkpoint
        logger.warning("skipping incomplete checkpoint %s: %s", checkpoint, reason)
    return None


def remove_leftovers(run_dir: str | Path) -> list[Path]:
    """Delete what a crashed save left behind (_tmp-checkpoint-N, _deleting-checkpoint-N); returns them."""
    if not Path(run_dir).is_dir():
        return []
    prefixes = (STAGING_PREFIX, TRASH_PREFIX, *LEGACY_LEFTOVER_PREFIXES)
    leftovers = sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and p.name.startswith(prefixes))
    for path in leftovers:
        logger.info("removing %s, left by a save that did not finish", path)
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def is_disk_full(err: BaseException, folder: str | Path | None = None) -> bool:
    """Whether a failed save ran out of space. torch.save and safetensors wrap the OSError in their own errors, so
    the message is read too; with an unspecific error, a folder whose disk is (nearly) full also counts."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(seen).lower() for text in _DISK_FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is not None and Path(folder).exists():
        return shutil.disk_usage(folder).free < 64 * 2**20
    return False
