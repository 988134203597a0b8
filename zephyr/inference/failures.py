"""When failed requests stop a stage. A failed request, generation or judgment is recorded as a failure and
retried by the next run, never used as a result; a stage that ends with more missing than its
`max_failure_rate` allows exits non-zero (and `zephyr run` does not mark it done)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path


class FailureLog:
    """The failed requests, generations and judgments of this run (AIF and eval): appended to a JSONL file as
    they happen, counted by reason, the first one kept whole (a server's own words). Never stored as results:
    a rerun asks again."""

    def __init__(self, path: Path) -> None:
        self.path, self.reasons, self.first = Path(path), Counter(), None

    def add(self, kind: str, key: str, reason: str) -> None:
        self.reasons[f"{kind}: {reason.split(' (after')[0].split(':')[0]}"] += 1
        self.first = self.first or f"{kind} {key}: {reason}"
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "key": key, "reason": reason, "time": time.time()}) + "\n")


class IncompleteError(RuntimeError):
    """The stage finished its pass but results are missing: rerun it to retry what failed."""


def check_missing(what: str, missing: int, total: int, reasons: Counter, first: str | None,
                  max_failure_rate: float) -> str | None:
    """Raise IncompleteError when more than `max_failure_rate` of `total` is missing; else return a note to
    report (None when nothing is missing)."""
    if not missing:
        return None
    counts = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common()) or "no failure recorded this run"
    line = (f"{what}: {missing} of {total} missing ({missing / max(total, 1):.1%}; failures: {counts}"
            + (f"; first: {first}" if first else "") + ")")
    if missing > max_failure_rate * total:
        raise IncompleteError(f"{line}. Rerun the same command to retry them (or allow some with max_failure_rate, "
                              f"now {max_failure_rate})")
    return f"{line}, within max_failure_rate {max_failure_rate}"
