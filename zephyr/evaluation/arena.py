"""Arena-style ratings: Bradley-Terry scores fitted to pairwise battles, with bootstrap intervals, and the
style-controlled variant that Chatbot Arena reports (answer length and markdown as covariates).

A battle is (model a, model b, outcome for a: 1 win, 0.5 tie, 0 loss), plus, for style control, the difference
a - b of each answer's style features. The model: P(a beats b) = sigmoid(beta_a - beta_b + gamma . style),
fitted by maximum likelihood (Newton's method, a tie counting as half a win, a tiny ridge so that a model that
wins every battle still gets a finite score). Scores are shown on the Elo scale, 400 / ln 10 per unit of beta,
with the baseline anchored at 1000.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ELO = 400 / math.log(10)
ANCHOR = 1000.0
STYLE_FEATURES = ("length", "headers", "list_items", "bold")


def style_features(text: str) -> list[float]:
    """Characters, markdown headers, list items and bold spans of an answer."""
    return [float(len(text)), float(len(re.findall(r"^#{1,6} ", text, flags=re.M))),
            float(len(re.findall(r"^\s*(?:[-*+]|\d+\.) ", text, flags=re.M))),
            float(len(re.findall(r"\*\*[^*]+\*\*", text)))]


@dataclass(frozen=True)
class Battle:
    a: str
    b: str
    outcome: float  # for a: 1 win, 0.5 tie, 0 loss
    style: tuple[float, ...] = ()  # style features of a's answer minus b's


def fit(battles: Sequence[Battle], models: list[str], anchor: str, style: bool, ridge: float = 1e-4) -> np.ndarray:
    """beta per model (anchor's fixed at 0), then gamma per style feature when `style`."""
    index = {m: i for i, m in enumerate(m for m in models if m != anchor)}
    k = len(index)
    diffs = np.array([b.style for b in battles], dtype=float) if style else np.zeros((len(battles), 0))
    if style:  # each feature's difference in its own standard deviations, so that gamma is comparable
        scale = diffs.std(axis=0)
        diffs = diffs / np.where(scale > 0, scale, 1.0)
    x = np.zeros((len(battles), k + diffs.shape[1]))
    for row, battle in enumerate(battles):
        if battle.a in index:
            x[row, index[battle.a]] += 1
        if battle.b in index:
            x[row, index[battle.b]] -= 1
    x[:, k:] = diffs
    y = np.array([b.outcome for b in battles], dtype=float)
    w = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-(x @ w)))
        step = np.linalg.solve((x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w)),
                               x.T @ (y - p) - ridge * w)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return w


def ratings(battles: Sequence[Battle], anchor: str, style: bool = False, samples: int = 1000,
            confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each model's Elo-scale score with a bootstrap interval over battles (the anchor: exactly 1000)."""
    models = sorted({b.a for b in battles} | {b.b for b in battles})
    others = [m for m in models if m != anchor]
    if not battles or anchor not in models:
        raise ValueError(f"ratings need battles involving the anchor {anchor!r}")
    point = fit(battles, models, anchor, style)[: len(others)]
    rng = np.random.default_rng(seed)
    boot = np.array([fit([battles[i] for i in rng.integers(0, len(battles), len(battles))], models, anchor,
                         style)[: len(others)] for _ in range(samples)])
    alpha = (1 - confidence) / 2
    out = {anchor: {"rating": ANCHOR, "ci_low": ANCHOR, "ci_high": ANCHOR, "battles": sum(
        anchor in (b.a, b.b) for b in battles)}}
    for j, m in enumerate(others):
        out[m] = {"rating": ANCHOR + ELO * float(point[j]),
                  "ci_low": ANCHOR + ELO * float(np.quantile(boot[:, j], alpha)),
                  "ci_high": ANCHOR + ELO * float(np.quantile(boot[:, j], 1 - alpha)),
                  "battles": sum(m in (b.a, b.b) for b in battles)}
    return out
