"""The UltraFeedback-style rubric, in our own words: every answer to a prompt is rated on four aspects (1-5,
with a rationale; honesty may be N/A), all answers shown together; optionally an overall 1-10 critique score.

Parsing is strict about what matters (every answer, every aspect, a rating in range) and lenient about the
rest (markdown, extra text, "4/5"): a judge output that fails is re-asked, then recorded as a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ASPECT_GUIDE = {
    "instruction_following": "Does the answer do what the instruction asks, within its constraints?",
    "honesty": "Does the answer express uncertainty where it should and avoid false confidence? "
               "Write N/A when the question leaves no room for uncertainty.",
    "truthfulness": "Is the answer free of factual errors, invented facts and self-contradictions?",
    "helpfulness": "Is the answer correct, informative and useful for the user's need, without padding?",
}

ALLOW_NA = {"honesty"}


class ParseError(ValueError):
    """The judge's output does not contain a complete, in-range rating for every answer."""


@dataclass
class Rating:
    ratings: dict[str, float | None] = field(default_factory=dict)  # None = N/A
    rationales: dict[str, str] = field(default_factory=dict)
    overall: float | None = None
    critique: str | None = None


def aspect_title(aspect: str) -> str:
    return aspect.replace("_", " ").capitalize()


def rubric_messages(instruction: str, answers: list[str], aspects: list[str]) -> list[dict[str, str]]:
    """One chat request asking for ratings of all answers (already in the order the judge should see)."""
    criteria = "\n".join(f"- {aspect_title(a)}: {ASPECT_GUIDE.get(a, 'Rate this aspect.')}" for a in aspects)
    answer_blocks = "\n\n".join(f"<answer {i}>\n{text}\n</answer {i}>" for i, text in enumerate(answers, 1))
    form = "\n".join(f"{aspect_title(a)}: <1-5{' or N/A' if a in ALLOW_NA else ''}>\nRationale: <one sentence>"
                     for a in aspects)
    system = (
        "You are a strict, fair evaluator of AI assistant answers. Rate each answer on its own merits; the order "
        "of the answers means nothing."
    )
    user = (
        f"Instruction:\n{instruction}\n\n{len(answers)} answers follow.\n\n{answer_blocks}\n\n"
        f"Rate every answer on each aspect from 1 (poor) to 5 (excellent):\n{criteria}\n\n"
        f"Reply with one block per answer, exactly in this form:\n### Answer <number>\n{form}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def critique_messages(instruction: str, answer: str) -> list[dict[str, str]]:
    user = (
        f"Instruction:\n{instruction}\n\nAnswer:\n{answer}\n\n"
        "Write a short critique of the answer, then give it an overall score from 1 (useless) to 10 (perfect).\n"
        "Reply exactly in this form:\nCritique: <text>\nOverall score: <1-10>"
    )
    return [{"role": "user", "content": user}]


_NUMBER = r"[\s*_]*(N/?A|\d+(?:\.\d+)?)[\s*_]*(?:/\s*\d+)?"


def parse_ratings(text: str, n_answers: int, aspects: list[str]) -> list[Rating]:
    """Ratings for answers 1..n, in the order shown. Raises ParseError naming what is missing or wrong."""
    blocks = re.split(r"^\W*(?:#+\s*)?answer\s*(\d+)\W*$", text, flags=re.IGNORECASE | re.MULTILINE)
    found: dict[int, str] = {}
    for number, body in zip(blocks[1::2], blocks[2::2], strict=True):
        found.setdefault(int(number), body)
    missing = [i for i in range(1, n_answers + 1) if i not in found]
    if missing:
        raise ParseError(f"no block for answer(s) {missing}")
    return [_parse_block(found[i], aspects, i) for i in range(1, n_answers + 1)]


def _parse_block(body: str, aspects: list[str], number: int) -> Rating:
    rating = Rating()
    for aspect in aspects:
        name = re.escape(aspect_title(aspect)).replace(r"\ ", r"[\s_-]*")
        match = re.search(rf"^\W*{name}\W*:{_NUMBER}", body, flags=re.IGNORECASE | re.MULTILINE)
        if not match:
            raise ParseError(f"answer {number}: no rating for {aspect}")
        value = match.group(1).upper().replace("/", "")
        if value == "NA":
            if aspect not in ALLOW_NA:
                raise ParseError(f"answer {number}: N/A is not allowed for {aspect}")
            rating.ratings[aspect] = None
        else:
            score = float(value)
            if not 1 <= score <= 5:
                raise ParseError(f"answer {number}: {aspect} rating {value} is outside 1-5")
            rating.ratings[aspect] = score
        after = body[match.end():]
        rationale = re.match(r"\s*(?:\n\W*)?rationale\W*:\s*(.*)", after, flags=re.IGNORECASE)
        rating.rationales[aspect] = rationale.group(1).strip() if rationale else ""
    return rating


def parse_critique(text: str) -> tuple[float, str]:
    match = re.search(r"overall\s*score\W*:" + _NUMBER, text, flags=re.IGNORECASE)
    if not match or match.group(1).upper().startswith("N"):
        raise ParseError("no 'Overall score: <1-10>' line")
    score = float(match.group(1))
    if not 1 <= score <= 10:
        raise ParseError(f"overall score {score:g} is outside 1-10")
    critique = re.search(r"critique\W*:\s*(.*?)(?:\n\W*overall\s*score|\Z)", text, flags=re.IGNORECASE | re.DOTALL)
    return score, critique.group(1).strip() if critique else ""
