"""Question files: JSONL, one question per line, MT-Bench's layout.

    {"question_id": 81, "category": "writing", "turns": ["first user turn", "follow-up"], "reference": [...]}

`question_id` and `turns` (a non-empty list of strings) are required; `category` defaults to "general";
`reference` (answers per turn) is optional and shown to LLM graders. MT-Bench's own question.jsonl loads as is.

A dataset (hub id or hub-layout folder) with the same columns, or `prompt_id` + `prompt` (a list of turns) as in
HuggingFaceH4/mt_bench_prompts, loads too: `questions: HuggingFaceH4/mt_bench_prompts` (split `train`).

The other layouts the field's benchmarks ship in load as they are:
- Arena-Hard's question.jsonl: `uid` (or `question_id`), `category`, and `turns` as `[{"content": ...}]`;
- AlpacaEval's alpaca_eval.json (a JSON list; JSONL works too): `instruction` is the one turn, `dataset` the
  category, and the row's place in the file its id.
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
    """(where, row) for every question: lines of a JSONL file, items of a JSON list, or rows of a dataset."""
    if path.is_file() and path.suffix == ".json":
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise QuestionError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
        if not isinstance(items, list):
            raise QuestionError(f"{path}: expected a JSON list of questions, got {type(items).__name__}")
        return [(f"{path} item {i}", row) for i, row in enumerate(items)]
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


def normalized(row: dict, index: int) -> dict:
    """A row of Arena-Hard's or AlpacaEval's layout in MT-Bench's."""
    if not isinstance(row, dict):
        return {}
    row = dict(row)
    if "question_id" not in row and "uid" in row:
        row["question_id"] = row["uid"]
    if "turns" not in row and isinstance(row.get("instruction"), str):
        row = {**row, "turns": [row["instruction"]], "category": row.get("category") or row.get("dataset")}
        row.setdefault("question_id", index)
    turns = row.get("turns")
    if isinstance(turns, list) and all(isinstance(t, dict) and isinstance(t.get("content"), str) for t in turns):
        row["turns"] = [t["content"] for t in turns]
    return row


def load_questions(path: str | Path) -> list[Question]:
    path = Path(path)
    questions, seen = [], set()
    for index, (where, raw) in enumerate(question_rows(path)):
        row = normalized(raw, index)
        turns = row.get("turns")
        if "question_id" not in row or not isinstance(turns, list) or not turns or \
                not all(isinstance(t, str) and t.strip() for t in turns):
            raise QuestionError(f"{where}: expected question_id and turns (a non-empty list of non-empty strings), "
                                "or Arena-Hard's uid and turns of {\"content\": ...}, or AlpacaEval's instruction")
        qid = str(row["question_id"])
        if qid in seen:
            raise QuestionError(f"{where}: duplicate question_id {qid}")
        seen.add(qid)
        questions.append(Question(qid, turns, str(row.get("category") or "general"), list(row.get("reference") or [])))
    if not questions:
        raise QuestionError(f"{path}: no questions")
    return questions
