"""Remove training rows whose user turns overlap a user-given list of benchmark prompts."""

from __future__ import annotations

import json
import re
from pathlib import Path

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    if len(words) < n:  # a short text counts as one n-gram of its own length
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def read_benchmark_prompts(path: str | Path) -> list[str]:
    """.txt: one prompt per line. .json/.jsonl: rows with `prompt`, `instruction`, `question` or `turns`
    (MT-Bench's list of turns: every turn counts)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decontamination_file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    rows = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x.strip()]
    prompts = []
    for i, row in enumerate(rows):
        for key in ("prompt", "instruction", "question", "turns"):
            if key in row:
                value = row[key]
                prompts.extend(value if isinstance(value, list) else [value])
                break
        else:
            raise ValueError(f"{path}: row {i} has none of prompt, instruction, question, turns")
    return [p for p in prompts if isinstance(p, str) and p.strip()]


class Decontaminator:
    def __init__(self, prompts: list[str], method: str = "ngram", n: int = 8) -> None:
        if method not in ("ngram", "exact"):
            raise ValueError(f"decontamination_method: expected ngram or exact, got {method!r}")
        self.method, self.n = method, n
        self.exact = {normalize(p) for p in prompts}
        self.grams: set[tuple[str, ...]] = set().union(*(ngrams(p, n) for p in prompts)) if prompts else set()

    def is_contaminated(self, texts: list[str]) -> bool:
        if self.method == "exact":
            return any(normalize(t) in self.exact for t in texts)
        return any(not self.grams.isdisjoint(ngrams(t, self.n)) for t in texts)
