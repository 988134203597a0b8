"""Keep prepared datasets on disk, named by their content, so the caches TRL builds on them survive the run.

Why: TRL caches a dataset's tokenization and its precomputed reference log-probs next to the dataset's files,
keyed by its fingerprint. A dataset built in memory has no files and a random fingerprint, so those caches are
thrown away with the process and every run (every sweep trial) recomputes the reference pass. A file-backed
copy whose folder is named by a hash of its rows makes the next run with the same data find them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, load_from_disk


def cache_root() -> Path:
    return Path(os.environ.get("ZEPHYR_CACHE", Path.home() / ".cache" / "zephyr")) / "datasets"


def content_digest(ds: Dataset, columns: list[str] | None = None, *extra: object) -> str:
    """A hash of the rows themselves (not of where they are stored: a memory-mapped table pickles as its path)."""
    table = (ds.select_columns(columns) if columns else ds).with_format("arrow")[:]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest = hashlib.sha256(sink.getvalue().to_pybytes())
    digest.update(repr(extra).encode())
    return digest.hexdigest()[:16]


def file_backed(ds: Dataset, name: str) -> Dataset:
    """`ds`, saved once under the cache (by content hash) and memory-mapped from there."""
    digest = content_digest(ds)
    folder = cache_root() / f"{name}-{digest}"
    if not (folder / "state.json").exists():
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        ds.save_to_disk(str(tmp))
        try:
            os.replace(tmp, folder)  # atomic: a concurrent rank that got there first keeps its copy
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(folder))
