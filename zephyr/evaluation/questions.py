"""Question files: JSONL, one question per line, MT-Bench's layout.

    {"question_id": 81, "category": "writing", "turns": ["first user turn", "follow-up"], "reference": [...]}

`question_id` and `turns` (a non-empty list of strings) are required; `category` defaults to "general";
`reference` (answers per turn) is optional and shown to LLM graders. MT-Bench's own question.jsonl loads as is.

A dataset (hub id or hub-layout folder) with the same columns, or `prompt_id` + `prompt` (a list of turns) as in
HuggingFaceH4/mt_bench_prompts, loads too: `questions: HuggingFaceH4/mt_bench_prompts` (split `train`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class QuestionError(ValueError):
    pass


@dataclass
class Question:
    question_id: str
    turns: list[str]
    category: str = "general"
    reference: list[str] = field(default_factory=list)


def question_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for every question: lines of a JSONL file, or rows of a dataset."""
    if path.is_file():
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise QuestionError(f"{path}:{lineno}: not JSON ({err.msg})") from None
        return rows
    if path.is_dir() or (len(path.parts) == 2 and not str(path).startswith((".", "/", "~"))):
        import datasets

        try:
            data = datasets.load_dataset(str(path), split="train")
        except Exception as err:  # offline, no such dataset, no train split
            raise QuestionError(f"questions: cannot load {path} as a dataset (split train): {err}") from None
        renamed = {"prompt_id": "question_id", "prompt": "turns"}
        return [(f"{path} row {i}", {renamed.get(k, k): v for k, v in row.items()})
                for i, row in enumerate(data)]
    raise QuestionError(f"question file not found: {path}")


def load_questions(path: str | Path) -> list[Question]:
    path = Path(path)
    questions, seen = [], set()
    for where, row in question_rows(path):
        turns = row.get("turns")
        if "question_id" not in row or not isinstance(turns, list) or not turns or \
                not all(isinstance(t, str) and t.strip() for t in turns):
            raise QuestionError(f"{where}: expected question_id and turns (a non-empty list of non-empty strings)")
        qid = str(row["question_id"])
        if qid in seen:
            raise QuestionError(f"{where}: duplicate question_id {qid}")
        seen.add(qid)
        questions.append(Question(qid, turns, str(row.get("category") or "general"), list(row.get("reference") or [])))
    if not questions:
        raise QuestionError(f"{path}: no questions")
    return questions
