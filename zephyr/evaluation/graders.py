"""Graders: single-answer 1-10 grading (MT-Bench style) and pairwise comparison with position swapping
(AlpacaEval style), by an LLM on any backend, a Python callable or a reward model. Prompts are ours."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from zephyr.inference.backends import ChatRequest, make_backend
from zephyr.inference.judging import CallableJudge, JudgeTask, RewardModelJudge
from zephyr.inference.settings import JudgeConfig

SINGLE_SYSTEM = "You are an impartial judge of AI assistant answers."
RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def render_conversation(messages: list[dict[str, str]]) -> str:
    return "\n\n".join(f"### {m['role'].capitalize()}:\n{m['content']}" for m in messages)


def single_prompt(messages: list[dict[str, str]], answer: str, reference: str | None) -> list[dict[str, str]]:
    ref = f"\n\n[Reference answer]\n{reference}" if reference else ""
    user = (
        f"[Conversation]\n{render_conversation(messages)}{ref}\n\n[Assistant's answer to the last turn]\n{answer}\n\n"
        "Judge how helpful, correct and precise the answer to the last turn is. Explain briefly, then rate it "
        "from 1 to 10 in exactly this form: Rating: [[5]]"
    )
    return [{"role": "system", "content": SINGLE_SYSTEM}, {"role": "user", "content": user}]


def pairwise_prompt(messages: list[dict[str, str]], first: str, second: str) -> list[dict[str, str]]:
    user = (
        f"[Conversation]\n{render_conversation(messages)}\n\n[Answer A]\n{first}\n\n[Answer B]\n{second}\n\n"
        "Which answer to the last turn is better? Ignore their order and length. Explain briefly, then give "
        "your verdict in exactly one of these forms: [[A]] if A is better, [[B]] if B is better, [[C]] for a tie."
    )
    return [{"role": "system", "content": SINGLE_SYSTEM}, {"role": "user", "content": user}]


def judge_identity(cfg: JudgeConfig) -> str:
    """What a stored grade or verdict was made by: the judge's settings (model, its weights' fingerprint, sampling)
    and the exact text of the prompts above, so that a changed judge or template never mixes with cached ones."""
    probe = [{"role": "user", "content": "{question}"}]
    templates = json.dumps([single_prompt(probe, "{answer}", "{reference}"), pairwise_prompt(probe, "{a}", "{b}")])
    return f"{cfg.settings_hash()}-{hashlib.sha256(templates.encode()).hexdigest()[:8]}"


def parse_rating(text: str) -> float | None:
    found = RATING.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None


def parse_verdict(text: str) -> str | None:
    found = VERDICT.findall(text or "")
    return found[-1] if found else None


class Grader:
    """An LLM asked for grades and verdicts, or a scorer (a Python callable, or a reward model such as `zephyr rm`
    trains) whose scores are the grades and whose comparisons are the verdicts."""

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.backend = make_backend(cfg) if cfg.type == "llm" else None
        self.scorer = {"callable": CallableJudge, "reward_model": RewardModelJudge}.get(cfg.type, lambda _: None)(cfg)

    def _ask(self, prompts: list[list[dict[str, str]]], parse) -> list[Any]:
        """Ask the LLM; re-ask what does not parse, up to max_parse_retries times. None = gave up."""
        results: list[Any] = [None] * len(prompts)
        pending = list(range(len(prompts)))
        for attempt in range(self.cfg.max_parse_retries + 1):
            requests = [ChatRequest(prompts[i], self.cfg.temperature, 1.0, self.cfg.max_new_tokens) for i in pending]
            answers = self.backend.complete(requests, seed=self.cfg.seed + attempt)
            still = []
            for i, answer in zip(pending, answers, strict=True):
                value = parse(answer.text) if answer.text else None
                if value is None:
                    still.append(i)
                else:
                    results[i] = value
            pending = still
            if not pending:
                break
        return results

    def single(self, items: list[tuple[list[dict[str, str]], str, str | None]]) -> list[float | None]:
        """Scores 1-10 for (conversation so far, answer to its last turn, reference or None)."""
        if self.scorer:
            return [self._scorer_scores(messages, [answer])[0] for messages, answer, _ in items]
        return self._ask([single_prompt(m, a, r) for m, a, r in items], parse_rating)

    def pairwise(self, items: list[tuple[list[dict[str, str]], str, str]]) -> list[dict[str, Any] | None]:
        """For (conversation, answer of the model, answer of the baseline): `outcome` 1 win, 0.5 tie, 0 loss, and
        the judge's two `verdicts` (model first, then baseline first); None when the judge gave no usable
        verdict. Each pair is judged in both orders; one that flips counts as a tie."""
        if self.scorer:
            first = [self._scorer_verdict(m, a, b) for m, a, b in items]
            second = [self._scorer_verdict(m, b, a) for m, a, b in items]
        else:
            first = self._ask([pairwise_prompt(m, a, b) for m, a, b in items], parse_verdict)
            second = self._ask([pairwise_prompt(m, b, a) for m, a, b in items], parse_verdict)
        return [None if v1 is None or v2 is None else {"outcome": combine_verdicts(v1, v2), "verdicts": [v1, v2]}
                for v1, v2 in zip(first, second, strict=True)]

    def _scorer_scores(self, messages, responses) -> list[float | None]:
        (judgments,) = self.scorer.judge([JudgeTask("", messages[-1]["content"], responses, messages[:-1])])
        return [None if "failure" in j else float(j.get("overall", j.get("reward"))) for j in judgments]

    def _scorer_verdict(self, messages, first: str, second: str) -> str | None:
        a, b = self._scorer_scores(messages, [first, second])
        if a is None or b is None:
            return None
        return "A" if a > b else "B" if b > a else "C"


def combine_verdicts(first: str | None, second_swapped: str | None) -> float | None:
    """`first` judged (model=A, baseline=B), `second_swapped` judged (baseline=A, model=B). The model wins (1)
    or loses (0) only if both orders agree; disagreement or a tie is a tie (0.5). A verdict the judge never
    gave in a usable form is no outcome (None): a failure to retry, not a tie."""
    if first is None or second_swapped is None:
        return None
    one = {"A": 1.0, "B": 0.0}.get(first)
    two = {"A": 0.0, "B": 1.0}.get(second_swapped)
    return one if one is not None and one == two else 0.5


def position_consistent(verdicts: list[str]) -> bool:
    """The verdict survives swapping the answers: the same answer wins in both orders, or both are ties."""
    return tuple(verdicts) in (("A", "B"), ("B", "A"), ("C", "C"))
