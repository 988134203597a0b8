"""What a judge is asked and how a Python function judges: shared by AIF's judges and evaluation's grader."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from zephyr.inference.settings import JudgeConfig


@dataclass
class JudgeTask:
    prompt_id: str
    prompt: str  # the user turn the responses answer
    responses: list[str]
    history: list[dict[str, str]] = field(default_factory=list)  # the dialogue before that turn, if any

    def instruction(self) -> str:
        """What an LLM judge is shown as the instruction: the user turn, after the dialogue that led to it."""
        if not self.history:
            return self.prompt
        dialogue = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in self.history)
        return (f"(The conversation so far, for context:)\n{dialogue}\n\n(The user's last turn, which the answers "
                f"reply to:)\n{self.prompt}")


def failure(reason: str) -> dict[str, Any]:
    return {"failure": reason}


class CallableJudge:
    """`module:function(prompt, responses)` returning one float (a reward) or one judgment dict per response."""

    def __init__(self, cfg: JudgeConfig) -> None:
        if not cfg.callable or ":" not in cfg.callable:
            raise ValueError(f"judge.callable: expected 'module:function', got {cfg.callable!r}")
        module, name = cfg.callable.split(":", 1)
        try:
            self.fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"judge.callable: cannot import {cfg.callable}: {err}") from None

    def judge(self, tasks: list[JudgeTask]) -> list[list[dict[str, Any]]]:
        out = []
        for t in tasks:
            try:
                scores = list(self.fn(t.prompt, t.responses))
                if len(scores) != len(t.responses):
                    raise ValueError(f"returned {len(scores)} scores for {len(t.responses)} responses")
                out.append([{"reward": float(s)} if isinstance(s, (int, float)) else dict(s) for s in scores])
            except Exception as err:  # a user's function: record its error, keep going
                out.append([failure(f"judge callable raised {type(err).__name__}: {err}")] * len(t.responses))
        return out


class RewardModelJudge:
    """A sequence-classification model scores each (prompt, answer) conversation: reward = its first logit."""

    def __init__(self, cfg: JudgeConfig) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        from zephyr.configs import ModelArguments
        from zephyr.modeling import load_tokenizer, resolve_dtype

        self.torch, self.batch_size = torch, cfg.batch_size
        self.tokenizer = load_tokenizer(ModelArguments(model_name_or_path=cfg.model,
                                                       trust_remote_code=cfg.trust_remote_code))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            cfg.model, dtype=resolve_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code
        ).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def judge(self, tasks: list[JudgeTask]) -> list[list[dict[str, Any]]]:
        convs = [(i, [*t.history, {"role": "user", "content": t.prompt}, {"role": "assistant", "content": r}])
                 for i, t in enumerate(tasks) for r in t.responses]
        rewards: list[float] = []
        for start in range(0, len(convs), self.batch_size):
            texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for _, c in convs[start:start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with self.torch.no_grad():
                rewards += self.model(**enc).logits[:, 0].float().tolist()
        out: list[list[dict[str, Any]]] = [[] for _ in tasks]
        for (i, _), reward in zip(convs, rewards, strict=True):
            out[i].append({"reward": reward})
        return out
