"""Question files: JSONL, one question per line, MT-Bench's layout.

    {"question_id": 81, "category": "writing", "turns": ["first user turn", "follow-up"], "reference": [...]}

`question_id` and `turns` (a non-empty list of strings) are required; `category` defaults to "general";
`reference` (answers per turn) is optional and shown to LLM graders. MT-Bench's own question.jsonl loads as is.
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


def load_questions(path: str | Path) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise QuestionError(f"question file not found: {path}")
    questions, seen = [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise QuestionError(f"{path}:{lineno}: not JSON ({err.msg})") from None
        turns = row.get("turns")
        if "question_id" not in row or not isinstance(turns, list) or not turns or \
                not all(isinstance(t, str) and t.strip() for t in turns):
            raise QuestionError(f"{path}:{lineno}: expected question_id and turns (a non-empty list of non-empty "
                                "strings)")
        qid = str(row["question_id"])
        if qid in seen:
            raise QuestionError(f"{path}:{lineno}: duplicate question_id {qid}")
        seen.add(qid)
        questions.append(Question(qid, turns, str(row.get("category") or "general"), list(row.get("reference") or [])))
    if not questions:
        raise QuestionError(f"{path}: no questions")
    return questions
