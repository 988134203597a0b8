"""Small chat tasks with answers a program can check (so a judge can score them exactly).

Rows are written in the real schemas users bring: UltraChat (`messages`) for SFT and
`ultrafeedback_binarized` (`chosen`/`rejected` conversations with scores) for DPO.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

WORDS = (
    "apple river stone cloud green house light music paper table water garden window yellow silver "
    "orange planet forest bridge castle dragon winter summer rocket pencil candle butter mirror basket "
    "jungle island marble shadow thunder velvet puzzle ladder pillow cotton copper meadow lemon tiger "
    "falcon harbor violet anchor canvas circle coffee dollar engine fabric ginger helmet jacket kettle"
).split()

SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly and exactly.")


@dataclass(frozen=True)
class Task:
    kind: str
    prompt: str
    answer: str

    @property
    def prompt_id(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


def make_task(rng: random.Random) -> Task:
    kind = rng.choice(["add", "reverse", "upper"])
    if kind == "add":
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        return Task(kind, f"What is {a} + {b}?", f"{a} + {b} = {a + b}.")
    word = rng.choice(WORDS)
    if kind == "reverse":
        return Task(kind, f"Reverse the word '{word}'.", f"The reverse of '{word}' is '{word[::-1]}'.")
    return Task(kind, f"Write '{word}' in capital letters.", f"'{word}' in capital letters is '{word.upper()}'.")


def wrong_answer(task: Task, rng: random.Random) -> str:
    """A plausible but wrong answer (what an imperfect model writes)."""
    if task.kind == "add":
        lhs, total = task.answer.rstrip(".").split(" = ")
        return f"{lhs} = {int(total) + rng.choice([-3, -2, -1, 1, 2, 10])}."
    word = task.prompt.split("'")[1]
    if task.kind == "reverse":
        bad = word[::-1][:-1] + word[0] * 2 if len(word) > 2 else word
        return f"The reverse of '{word}' is '{bad}'."
    return f"'{word}' in capital letters is '{word.capitalize()}'."


def sft_row(task: Task, rng: random.Random) -> dict:
    messages = [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": task.answer}]
    if rng.random() < 0.2:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return {"prompt": task.prompt, "prompt_id": task.prompt_id, "messages": messages}


def preference_row(task: Task, rng: random.Random) -> dict:
    user = {"role": "user", "content": task.prompt}
    chosen = [user, {"role": "assistant", "content": task.answer}]
    rejected = [user, {"role": "assistant", "content": wrong_answer(task, rng)}]
    return {
        "prompt": task.prompt,
        "prompt_id": task.prompt_id,
        "chosen": chosen,
        "rejected": rejected,
        "messages": chosen,
        "score_chosen": 10.0,
        "score_rejected": 2.0,
    }


def make_rows(n: int, seed: int, kind: str) -> list[dict]:
    rng = random.Random(seed)
    build = sft_row if kind == "sft" else preference_row
    return [build(make_task(rng), rng) for _ in range(n)]


def solve(prompt: str) -> str | None:
    """The exact answer to a task prompt, or None if the prompt is not one of ours."""
    if match := re.fullmatch(r"What is (\d+) \+ (\d+)\?", prompt):
        a, b = int(match[1]), int(match[2])
        return f"{a} + {b} = {a + b}."
    if match := re.fullmatch(r"Reverse the word '(\w+)'\.", prompt):
        return f"The reverse of '{match[1]}' is '{match[1][::-1]}'."
    if match := re.fullmatch(r"Write '(\w+)' in capital letters\.", prompt):
        return f"'{match[1]}' in capital letters is '{match[1].upper()}'."
    return None


def score_answer(prompt: str, response: str) -> float:
    """10 for the exact answer; otherwise 1 + up to 8 for the share of the answer's characters it gets right
    in place (so a nearly right answer beats a wrong one)."""
    expected = solve(prompt)
    if expected is None:
        raise ValueError(f"not a task prompt: {prompt!r}")
    response = response.strip()
    if response == expected:
        return 10.0
    same = sum(a == b for a, b in zip(response, expected, strict=False))
    return 1.0 + 8.0 * same / max(len(expected), len(response))


def judge(prompt: str, responses: list[str]) -> list[float]:
    """A programmatic judge for `zephyr aif` (judge.type: callable, callable: zephyr.embedded.tasks:judge)."""
    return [round(score_answer(prompt, r), 4) for r in responses]
