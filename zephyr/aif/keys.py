"""Store keys of the AIF stage: what a stored completion or judgment *is*, as a JSON list.

A key is never cut apart at a separator character: prompt ids are user data and may contain any character
(older zephyr versions joined the parts with "|" and lost the judgments of a prompt id containing one). Stores
written with those "|" keys are upgraded as they are read (`upgrade_completion`, `upgrade_judgment`), so their
work is not redone.
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
    parts = json.loads(key)
    if not isinstance(parts, list):
        raise StoreError(f"not an AIF store key: {key!r}")
    return parts


def judge_of(judgment_key_text: str) -> str:
    """The judge settings hash a judgment key was made with."""
    return key_parts(judgment_key_text)[1]


def sample_seed_text(key: str) -> str:
    """What a completion is, without where its model lives: the text its sampling seed is derived from. Only ever
    hashed, never parsed; it keeps the old "|" layout so that the same sample gets the same seed as before."""
    prompt_id, generator, sample, _ = key_parts(key)
    return f"{prompt_id}|{generator}|{sample}"


# ------------------------------------------------------------------------------------ stores of older versions
def _is_legacy(key: str) -> bool:
    """A key of the old "|"-joined layout: never valid JSON (text follows the first part)."""
    try:
        return not isinstance(json.loads(key), list)
    except ValueError:
        return True


def _legacy_completion_key(key: str, prompt_id: str) -> str:
    """`prompt_id|generator|sample|hash` as a new key; the prompt id is known, so a "|" inside it is no problem."""
    if not key.startswith(f"{prompt_id}|"):
        raise StoreError(f"cannot read the old store key {key!r} of prompt {prompt_id!r}; delete the store to redo it")
    generator, sample, settings_hash = key[len(prompt_id) + 1:].rsplit("|", 2)
    return completion_key(prompt_id, generator, int(sample), settings_hash)


def upgrade_completion(record: dict[str, Any]) -> dict[str, Any]:
    if not _is_legacy(record["key"]):
        return record
    return {**record, "key": _legacy_completion_key(record["key"], record["prompt_id"])}


def upgrade_judgment(record: dict[str, Any]) -> dict[str, Any]:
    if not _is_legacy(record["key"]):
        return record
    prompt_id, key = record["prompt_id"], record["key"]
    if not key.startswith(f"{prompt_id}|"):
        raise StoreError(f"cannot read the old store key {key!r} of prompt {prompt_id!r}; delete the store to redo it")
    judge_hash = key[len(prompt_id) + 1:].split("|", 1)[0]
    completions = {_legacy_completion_key(k, prompt_id): v for k, v in record["completions"].items()}
    return {**record, "key": judgment_key(prompt_id, judge_hash, list(completions)), "completions": completions}
