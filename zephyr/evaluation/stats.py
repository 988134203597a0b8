"""Percentile bootstrap confidence intervals, seeded so reports are reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def bootstrap_mean(values, samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of `values` with a percentile bootstrap interval (resampling the values with replacement)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return Estimate(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), x.size)


def paired_difference(a, b, samples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of a - b over the same questions, with a bootstrap interval that resamples questions."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in size: {a.shape} vs {b.shape}")
    return bootstrap_mean(a - b, samples, confidence, seed)


def fit_length_logit(outcomes, length_diffs, ridge: float = 1e-4) -> tuple[float, float, float]:
    """The judge's preference as AlpacaEval 2's length control models it: P(win) = sigmoid(theta + phi *
    tanh(d / s)), d the answer's length minus the baseline's, s the standard deviation of d. Outcomes are 1, 0.5
    (a tie, as half a win) or 0, fitted by Newton's method on the log-likelihood with a tiny ridge (so a judge that
    always agrees still gives a finite fit). Returns (theta, phi, s)."""
    y, d = np.asarray(outcomes, dtype=float), np.asarray(length_diffs, dtype=float)
    scale = float(d.std()) or 1.0
    x = np.stack([np.ones_like(d), np.tanh(d / scale)], axis=1)
    w = np.zeros(2)
    for _ in range(100):
        p = 1 / (1 + np.exp(-(x @ w)))
        grad = x.T @ (y - p) - ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1]), scale


def length_controlled_win_rate(outcomes, length_diffs, samples: int = 2000, confidence: float = 0.95,
                               seed: int = 0) -> Estimate:
    """The win rate at zero length difference, sigmoid(theta) of `fit_length_logit`, with a bootstrap interval
    that resamples the judged answers: what a judge that prefers longer answers would say if the two models'
    answers were as long as each other."""
    y, d = np.asarray(outcomes, dtype=float), np.asarray(length_diffs, dtype=float)
    if y.size == 0 or y.shape != d.shape:
        raise ValueError(f"length control needs one length difference per outcome: {y.shape} vs {d.shape}")
    rate = lambda idx: 1 / (1 + np.exp(-fit_length_logit(y[idx], d[idx])[0]))  # noqa: E731
    rng = np.random.default_rng(seed)
    boot = np.array([rate(rng.integers(0, y.size, y.size)) for _ in range(samples)])
    alpha = (1 - confidence) / 2
    return Estimate(float(rate(np.arange(y.size))), float(np.quantile(boot, alpha)),
                    float(np.quantile(boot, 1 - alpha)), int(y.size))
