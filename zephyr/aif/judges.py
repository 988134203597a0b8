"""Judges rate every answer to a prompt: an LLM with the UltraFeedback rubric, a reward model, or a Python
callable. Each returns, per answer, a judgment dict: ratings, rationales, overall, critique, reward, failure."""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any

from zephyr.aif.rubric import ParseError, critique_messages, parse_critique, parse_ratings, rubric_messages
from zephyr.inference.backends import ChatRequest, make_backend
from zephyr.inference.judging import CallableJudge, JudgeTask, RewardModelJudge, failure
from zephyr.inference.settings import JudgeConfig


class LLMJudge:
    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.backend = make_backend(cfg)

    def judge(self, tasks: list[JudgeTask]) -> list[list[dict[str, Any]]]:
        cfg = self.cfg
        orders = [self._order(t) for t in tasks]
        requests = [self._request(rubric_messages(t.instruction(), [t.responses[i] for i in order], cfg.aspects))
                    for t, order in zip(tasks, orders, strict=True)]
        results: list[list[dict[str, Any]] | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))
        reasons: dict[int, str] = {}
        for attempt in range(cfg.max_parse_retries + 1):
            answers = self.backend.complete([requests[i] for i in pending], seed=cfg.seed + attempt * 7919)
            still = []
            for i, answer in zip(pending, answers, strict=True):
                if answer.failure:  # the backend already retried the transport
                    results[i] = [failure(f"judge request failed: {answer.failure}")] * len(tasks[i].responses)
                    continue
                try:
                    shown = parse_ratings(answer.text, len(tasks[i].responses), cfg.aspects)
                except ParseError as err:
                    reasons[i] = str(err)
                    still.append(i)
                    continue
                judgments: list[dict[str, Any]] = [{}] * len(shown)
                for position, original in enumerate(orders[i]):  # undo the shuffle
                    judgments[original] = {k: v for k, v in asdict(shown[position]).items() if v is not None}
                results[i] = judgments
            pending = still
            if not pending:
                break
        for i in pending:
            n = cfg.max_parse_retries + 1
            results[i] = [failure(f"unparsable judge output after {n} attempts: {reasons[i]}")] * len(tasks[i].responses)
        if cfg.overall_score:
            self._add_overall(tasks, results)
        return results  # type: ignore[return-value]

    def _order(self, task: JudgeTask) -> list[int]:
        order = list(range(len(task.responses)))
        random.Random(f"{self.cfg.seed}:{task.prompt_id}").shuffle(order)
        return order

    def _request(self, messages: list[dict[str, str]]) -> ChatRequest:
        return ChatRequest(messages, temperature=self.cfg.temperature, max_new_tokens=self.cfg.max_new_tokens)

    def _add_overall(self, tasks: list[JudgeTask], results: list) -> None:
        slots = [(i, j) for i, t in enumerate(tasks) for j in range(len(t.responses)) if "failure" not in results[i][j]]
        requests = [self._request(critique_messages(tasks[i].instruction(), tasks[i].responses[j]))
                    for i, j in slots]
        pending = list(range(len(slots)))
        for attempt in range(self.cfg.max_parse_retries + 1):
            answers = self.backend.complete([requests[k] for k in pending], seed=self.cfg.seed + 1 + attempt * 7919)
            still = []
            for k, answer in zip(pending, answers, strict=True):
                i, j = slots[k]
                try:
                    if answer.failure:
                        raise ParseError(f"critique request failed: {answer.failure}")
                    score, critique = parse_critique(answer.text)
                    results[i][j] = {**results[i][j], "overall": score, "critique": critique}
                except ParseError as err:
                    still.append(k)
                    results[i][j] = {**results[i][j], "overall_failure": str(err)}
            pending = still
            if not pending:
                break


JUDGES = {"llm": LLMJudge, "reward_model": RewardModelJudge, "callable": CallableJudge}


def make_judge(cfg: JudgeConfig):
    return JUDGES[cfg.type](cfg)
