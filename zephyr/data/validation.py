"""Row validators for canonical rows (see `zephyr.data.schemas`). Each returns None or the reason it fails."""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


def conversation_problem(messages: list[dict[str, str]], must_end_with: str | None) -> str | None:
    """Roles known; at most one system message, first; then user/assistant alternating from user; no empty text."""
    if not messages:
        return "empty conversation"
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            return f"message {i}: unknown role {m['role']!r} (expected one of {list(ROLES)})"
        if not m["content"].strip():
            return f"message {i} ({m['role']}): empty content"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns:
        return "only a system message"
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            offset = len(messages) - len(turns)
            return f"message {i + offset}: roles must alternate user/assistant; expected {expected}, got {m['role']}"
    if must_end_with and turns[-1]["role"] != must_end_with:
        article = "an" if must_end_with == "assistant" else "a"
        return f"conversation must end with {article} {must_end_with} message, ends with {turns[-1]['role']}"
    return None


def sft_problem(row: dict[str, Any]) -> str | None:
    return conversation_problem(row["messages"], must_end_with="assistant")


def preference_problem(row: dict[str, Any]) -> str | None:
    problem = conversation_problem(row["prompt"], must_end_with="user")
    if problem:
        return f"prompt: {problem}"
    for side in ("chosen", "rejected"):
        answer = row[side]
        if len(answer) != 1 or answer[0]["role"] != "assistant":
            return f"{side} must be exactly one assistant message"
        if not answer[0]["content"].strip():
            return f"{side}: empty content"
    if row["chosen"][0]["content"].strip() == row["rejected"][0]["content"].strip():
        return "chosen is identical to rejected"
    return None


def unpaired_problem(row: dict[str, Any]) -> str | None:
    problem = conversation_problem(row["prompt"], must_end_with="user")
    if problem:
        return f"prompt: {problem}"
    answer = row["completion"]
    if len(answer) != 1 or answer[0]["role"] != "assistant":
        return "completion must be exactly one assistant message"
    if not answer[0]["content"].strip():
        return "completion: empty content"
    return None
