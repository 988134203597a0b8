"""Store keys of the AIF stage: what a stored completion or judgment *is*, as a JSON list.

A key is never cut apart at a separator character: prompt ids are user data and may contain any character,
so the parts are kept as a JSON list.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from zephyr.inference.store import StoreError


def completion_key(prompt_id: str, generator: str, sample: int, settings_hash: str) -> str:
    return json.dumps([prompt_id, generator, sample, settings_hash])


def judgment_key(prompt_id: str, judge_hash: str, completion_keys: list[str]) -> str:
    """One judgment covers every answer to a prompt: keyed by the judge's settings and which answers it saw."""
    digest = hashlib.sha256("\n".join(completion_keys).encode()).hexdigest()[:12]  # JSON keys hold no raw "\n"
    return json.dumps([prompt_id, judge_hash, digest])


def key_parts(key: str) -> list[Any]:
    try:
        parts = json.loads(key)
    except ValueError:
        parts = None
    if not isinstance(parts, list):
        raise StoreError(f"not an AIF store key: {key!r} (expected a JSON list, as completion_key and judgment_key "
                         "write them)")
    return parts


def judge_of(judgment_key_text: str) -> str:
    """The judge settings hash a judgment key was made with."""
    return key_parts(judgment_key_text)[1]


def sample_seed_text(key: str) -> str:
    """What a completion is, without where its model lives: the text its sampling seed is derived from. Only ever
    hashed, never parsed."""
    prompt_id, generator, sample, _ = key_parts(key)
    return f"{prompt_id}|{generator}|{sample}"
