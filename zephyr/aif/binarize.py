"""Turn rated answers into (chosen, rejected) pairs. Every random choice is seeded by (seed, prompt_id), so
the result does not depend on prompt order, sharding or resumption."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from zephyr.aif.config import BinarizationConfig


@dataclass
class Candidate:
    """One answer with its judgment (`judgment` is None when it was never judged)."""

    response: str
    model: str
    judgment: dict[str, Any] | None


def score_of(judgment: dict[str, Any] | None, source: str) -> float | None:
    """The score binarization ranks by, or None when this answer has none (unjudged, failed, all N/A)."""
    if not judgment or judgment.get("failure"):
        return None
    if source == "mean_aspects":
        values = [v for v in (judgment.get("ratings") or {}).values() if v is not None]
        return sum(values) / len(values) if values else None
    value = judgment.get("overall" if source == "overall" else "reward")
    return float(value) if value is not None else None


def binarize_prompt(
    prompt: str, prompt_id: str, candidates: list[Candidate], cfg: BinarizationConfig,
    history: Sequence[dict[str, str]] = (),
) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) for a kept pair, or (None, reason) for a dropped prompt. `history`: the conversation before
    `prompt` (a later turn of a dialogue): chosen and rejected are then that conversation, then the answer."""
    # An empty answer is what a model said (a local model may stop at once), but it makes no training pair.
    scored = [(c, s) for c in candidates
              if c.response.strip() and (s := score_of(c.judgment, cfg.score)) is not None]
    if len(scored) < 2:
        return None, "fewer than 2 rated answers"
    rng = random.Random(f"{cfg.seed}:{prompt_id}")
    best = max(s for _, s in scored)
    top = [i for i, (_, s) in enumerate(scored) if s == best]
    chosen_index = rng.choice(top)
    chosen, chosen_score = scored[chosen_index]
    rest = [cs for i, cs in enumerate(scored) if i != chosen_index]
    if cfg.rejected == "random":
        rejected, rejected_score = rng.choice(rest)
    elif cfg.rejected == "lowest":
        low = min(s for _, s in rest)
        rejected, rejected_score = rng.choice([cs for cs in rest if cs[1] == low])
    else:  # random_lower
        lower = [cs for cs in rest if cs[1] < chosen_score]
        if not lower:
            return None, "all answers tied"
        rejected, rejected_score = rng.choice(lower)
    if rejected_score == chosen_score and cfg.ties == "drop":
        return None, "tie"
    if chosen_score - rejected_score < cfg.min_gap:
        return None, "score gap below min_gap"
    if chosen.response.strip() == rejected.response.strip():
        return None, "identical answers"
    context = [*({"role": m["role"], "content": m["content"]} for m in history), {"role": "user", "content": prompt}]
    chosen_conv = [*context, {"role": "assistant", "content": chosen.response}]
    row = {
        "prompt": prompt,
        "prompt_id": prompt_id,
        "chosen": chosen_conv,
        "rejected": [*context, {"role": "assistant", "content": rejected.response}],
        "messages": chosen_conv,
        "score_chosen": float(chosen_score),
        "score_rejected": float(rejected_score),
    }
    return row, None


@dataclass
class RatedPrompt:
    """A prompt (the last user turn), its id, its rated answers, and the conversation before it, if any."""

    text: str
    id: str
    candidates: list[Candidate]
    history: list[dict[str, str]] = field(default_factory=list)


def binarize(prompts: list[RatedPrompt], cfg: BinarizationConfig) -> tuple[list[dict], Counter]:
    """Pairs for every prompt that yields one, and the count of dropped prompts by reason."""
    rows, dropped = [], Counter()
    for p in prompts:
        row, reason = binarize_prompt(p.text, p.id, p.candidates, cfg, p.history)
        if row is None:
            dropped[reason] += 1
        else:
            rows.append(row)
    return rows, dropped
