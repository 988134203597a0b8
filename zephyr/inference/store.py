"""Append-only JSONL record stores that survive kill -9.

Each record is written as one line, flushed and fsync'ed before the call returns, so everything reported
done is on disk. A crash can leave only the *last* line incomplete: on open it is cut off (and redone),
never glued to the next record. Records carry a `key`; the first record of a key wins.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class StoreError(ValueError):
    pass


class RecordStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            logger.warning("%s: cutting off an incomplete last record (%d bytes) left by an interrupted run",
                           self.path, len(data) - complete)
            with open(self.path, "r+b") as f:
                f.truncate(complete)
                f.flush()
                os.fsync(f.fileno())
        for lineno, line in enumerate(data[:complete].splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise StoreError(f"{self.path}:{lineno}: corrupt record ({err.msg}); only the last line of an "
                                 "append-only store can be incomplete, so this file was edited or damaged") from None
            self.records.setdefault(record["key"], record)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """Persist new records (already-present keys are skipped); returns how many were written."""
        new = [r for r in records if r["key"] not in self.records]
        if not new:
            return 0
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new).encode()
        with open(self.path, "ab") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        for r in new:
            self.records[r["key"]] = r
        return len(new)


def read_stores(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Merge several stores (e.g. one per shard) into one key -> record map."""
    merged: dict[str, dict[str, Any]] = {}
    for path in sorted(paths):
        for key, record in RecordStore(path).records.items():
            merged.setdefault(key, record)
    return merged


def shard_suffix(shard: tuple[int, int]) -> str:
    """What a shard worker adds to its store and failure file names (nothing for a run without shards)."""
    i, n = shard
    return f".shard-{i}-of-{n}" if n > 1 else ""


def parse_shard(shard: str | None) -> tuple[int, int]:
    """`--shard i/n` (AIF and eval workers, one per GPU or node, each with stores of its own) as (i, n)."""
    if not shard:
        return 0, 1
    try:
        i, n = (int(x) for x in shard.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise StoreError(f"shard: expected i/n with 0 <= i < n, e.g. 0/4; got {shard!r}") from None
    return i, n
