"""Keep prepared datasets on disk, named by their content, so the caches TRL builds on them survive the run; and
find them again from what they were prepared from, so that preparing is done once.

Why: TRL caches a dataset's tokenization and its precomputed reference log-probs next to the dataset's files,
keyed by its fingerprint. A dataset built in memory has no files and a random fingerprint, so those caches are
thrown away with the process and every run (every sweep trial) recomputes the reference pass. A file-backed
copy whose folder is named by a hash of its rows makes the next run with the same data find them.

The rows are only known once prepared, so a second index is keyed by the inputs (`preparation_key`: the recipe's
data settings, the loaded sources' files, the tokenizer and length settings, the versions and zephyr's own data
code). Under a multi-process launch the main process prepares and writes it; the other ranks, let in after it
(`TrainingArguments.main_process_first`), read the same folders instead of preparing again; so does the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, load_from_disk

# What shapes a prepared dataset besides its inputs: zephyr's own data code, and the libraries that read and
# tokenize. Any change to these makes a new key (old entries are simply not found again).
CODE_FILES = ("cache.py", "decontamination.py", "loading.py", "pipeline.py", "schemas.py", "validation.py",
              "../chat_template.py")
LIBRARIES = ("datasets", "pyarrow", "transformers", "tokenizers", "jinja2", "trl")


def cache_root() -> Path:
    return Path(os.environ.get("ZEPHYR_CACHE", Path.home() / ".cache" / "zephyr")) / "datasets"


def content_digest(ds: Dataset, columns: list[str] | None = None, *extra: object, rows_only: bool = False) -> str:
    """A hash of the rows themselves (not of where they are stored: a memory-mapped table pickles as its path).
    The rows' Arrow IPC stream is hashed as it is written, without a copy of it in memory. With `rows_only`, the
    schema's metadata (the features `datasets` keeps there, and whatever else a writer left) is left out: the
    values and their Arrow types alone."""
    table = (ds.select_columns(columns) if columns else ds).with_format("arrow")[:]
    if rows_only:
        table = table.replace_schema_metadata(None)
    digest = hashlib.sha256()
    with pa.ipc.new_stream(pa.PythonFile(_HashSink(digest), mode="w"), table.schema) as writer:
        writer.write_table(table)
    digest.update(repr(extra).encode())
    return digest.hexdigest()[:16]


class _HashSink:
    """A write-only file that only hashes what is written to it."""

    closed = False

    def __init__(self, digest: Any) -> None:
        self.digest = digest

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


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


# ---------------------------------------------------------------------------------------------------------------
# the index by inputs


def source_identity(ds: Dataset) -> Any:
    """What a loaded source is, cheaply: the files it is memory-mapped from (path, size, modification time), its
    rows and columns. `datasets` writes a new cache file whenever a data file changes (its cache key holds the
    files' modification times), so changed data means a new identity. A dataset held in memory is hashed."""
    files = [Path(f["filename"]) for f in ds.cache_files]
    if not files:
        return {"rows": content_digest(ds)}
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return {"files": stats, "rows": len(ds), "features": repr(ds.features)}


def file_identity(path: str | None) -> Any:
    """A local file as (path, size, modification time); what is not a file, as given."""
    if path is None or not Path(path).is_file():
        return path
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def code_identity() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    code = hashlib.sha256()
    for name in CODE_FILES:
        path = here / name
        code.update(path.read_bytes() if path.is_file() else b"")
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = None
    return {"code": code.hexdigest(), **versions}


def preparation_key(**inputs: Any) -> str:
    """A hash of everything a preparation depends on (`inputs` must be JSON-able or have a stable repr)."""
    text = json.dumps({**inputs, "zephyr": code_identity()}, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def work_folder(key: str) -> Path:
    """Where one preparation writes its intermediate datasets (this process's own; removed when it is done)."""
    folder = cache_root() / "work" / f"{key}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _index(key: str) -> Path:
    return cache_root() / "prepared" / f"{key}.json"


def read_prepared(key: str) -> tuple[dict[str, Dataset | None], dict] | None:
    """The datasets and metadata written by `write_prepared` under `key`, or None when there are none (or their
    folders were removed since)."""
    index = _index(key)
    try:
        entry = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    folders = {split: Path(name) if name else None for split, name in entry["splits"].items()}
    if any(f is not None and not (f / "state.json").is_file() for f in folders.values()):
        return None
    splits = {split: load_from_disk(str(f)) if f is not None else None for split, f in folders.items()}
    return splits, entry["meta"]


def write_prepared(key: str, splits: dict[str, Dataset | None], meta: dict) -> None:
    """Record that the inputs hashed to `key` gave `splits` (datasets returned by `file_backed`) and `meta`."""
    # file_backed's folder of each split
    names = {split: str(Path(ds.cache_files[0]["filename"]).parent) if ds is not None else None
             for split, ds in splits.items()}
    index = _index(key)
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_name(f"{index.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"splits": names, "meta": meta}, indent=1))
    os.replace(tmp, index)
