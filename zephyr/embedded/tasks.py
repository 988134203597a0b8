"""The embedded default's task family: short chat tasks whose answers a program can check exactly.

Four kinds: `add` ("What is 3 + 4?"), `reverse`, `upper` and `copy` a word. The dSFT data is written by an
imperfect teacher that makes one *systematic* mistake per kind (an off-by-one sum, a capitalized instead of
upper-cased word, ...) at a fixed rate, above one half for `add` and `reverse`. The dSFT model learns both the
right and the wrong habit; AIF samples both, the programmatic judge (`judge`) prefers the right one, and dDPO
can remove the wrong habit: alignment here is measurable, not just runnable.

Rows are written in the real schemas users bring: UltraChat (`messages`) for SFT, `ultrafeedback_binarized`
for preferences, MT-Bench's question layout for evaluation.
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

KINDS = ("add", "reverse", "upper", "copy")

# How often the dSFT teacher makes its systematic mistake, per kind.
TEACHER_ERROR_RATE = {"add": 0.6, "reverse": 0.6, "upper": 0.3, "copy": 0.3}

SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly and exactly.")


@dataclass(frozen=True)
class Task:
    kind: str
    prompt: str
    answer: str

    @property
    def prompt_id(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()[:16]


def all_tasks() -> list[Task]:
    """Every task of the family (100 sums, 3 x 60 word tasks), in a fixed order."""
    tasks = [Task("add", f"What is {a} + {b}?", f"{a} + {b} = {a + b}.") for a in range(10) for b in range(10)]
    for word in WORDS:
        tasks.append(Task("reverse", f"Reverse the word '{word}'.", word[::-1]))
        tasks.append(Task("upper", f"Write '{word}' in capital letters.", word.upper()))
        tasks.append(Task("copy", f"Repeat the word '{word}'.", word))
    return tasks


def systematic_error(task: Task) -> str:
    """The teacher's habitual mistake on this task."""
    if task.kind == "add":
        lhs, total = task.answer.rstrip(".").split(" = ")
        return f"{lhs} = {int(total) + 1}."
    word = re.search(r"'(\w+)'", task.prompt)[1]
    if task.kind == "reverse":
        return word[::-1][1:] + word[-1]
    if task.kind == "upper":
        return word.capitalize()
    return word + word[-1]


def wrong_answer(task: Task, rng: random.Random) -> str:
    """A plausible wrong answer: the systematic error, or a near miss."""
    if rng.random() < 0.5:
        return systematic_error(task)
    if task.kind == "add":
        lhs, total = task.answer.rstrip(".").split(" = ")
        return f"{lhs} = {int(total) + rng.choice([-2, -1, 2, 3])}."
    return task.answer[:-1] if len(task.answer) > 1 else task.answer + "x"


def teacher_answer(task: Task, rng: random.Random) -> str:
    return systematic_error(task) if rng.random() < TEACHER_ERROR_RATE[task.kind] else task.answer


def sft_row(task: Task, rng: random.Random) -> dict:
    messages = [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": teacher_answer(task, rng)}]
    if rng.random() < 0.1:
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
        "score_rejected": score_answer(task.prompt, rejected[1]["content"]),
    }


def make_rows(n: int, seed: int, kind: str, tasks: list[Task] | None = None) -> list[dict]:
    """n rows of `kind` ("sft" or "prefs") drawn from `tasks` (default: all)."""
    rng = random.Random(seed)
    pool = tasks or all_tasks()
    build = sft_row if kind == "sft" else preference_row
    return [build(rng.choice(pool), rng) for _ in range(n)]


def split_tasks(eval_fraction: float = 0.25, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """(AIF/DPO prompts, held-out eval prompts): disjoint, each kind split in the same proportion."""
    rng = random.Random(seed)
    train, held_out = [], []
    for kind in KINDS:
        tasks = [t for t in all_tasks() if t.kind == kind]
        rng.shuffle(tasks)
        cut = round(len(tasks) * eval_fraction)
        held_out += tasks[:cut]
        train += tasks[cut:]
    return train, held_out


def solve(prompt: str) -> str | None:
    """The exact answer to a task prompt, or None if the prompt is not one of ours."""
    if match := re.fullmatch(r"What is (\d+) \+ (\d+)\?", prompt):
        a, b = int(match[1]), int(match[2])
        return f"{a} + {b} = {a + b}."
    if match := re.fullmatch(r"Reverse the word '(\w+)'\.", prompt):
        return match[1][::-1]
    if match := re.fullmatch(r"Write '(\w+)' in capital letters\.", prompt):
        return match[1].upper()
    if match := re.fullmatch(r"Repeat the word '(\w+)'\.", prompt):
        return match[1]
    return None


def score_answer(prompt: str, response: str) -> float:
    """10 for the exact answer; any other answer 1 to 5, by the share of the answer's characters it gets right
    in place: a near miss beats nonsense, but nothing comes close to being right."""
    expected = solve(prompt)
    if expected is None:
        raise ValueError(f"not a task prompt: {prompt!r}")
    response = response.strip()
    if response == expected:
        return 10.0
    same = sum(a == b for a, b in zip(response, expected, strict=False))
    return round(1.0 + 4.0 * same / max(len(expected), len(response), 1), 4)


def judge(prompt: str, responses: list[str]) -> list[float]:
    """A programmatic judge for `zephyr aif` and `zephyr eval` (judge.type: callable,
    callable: zephyr.embedded.tasks:judge)."""
    return [score_answer(prompt, r) for r in responses]
