"""A PNG of the eval: mean score per model with its confidence interval, overall and per category."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def plot_scores(results: dict[str, Any], path: str | Path) -> Path:
    models = [m for m, e in results["models"].items() if "score" in e]  # a model with no grade has no bar
    groups = ["overall"] + sorted({c for e in results["models"].values() for c in e.get("categories", {})})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) * max(len(models), 1)), 4.0))
    width = 0.8 / max(len(models), 1)
    missing = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    for k, name in enumerate(models):
        entry = results["models"][name]
        stats = [entry["score"]] + [entry["categories"].get(g, missing) for g in groups[1:]]
        means = [s["mean"] for s in stats]
        errors = [[0.0 if s is missing else s["mean"] - s["ci_low"] for s in stats],
                  [0.0 if s is missing else s["ci_high"] - s["mean"] for s in stats]]
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, means, width, yerr=errors, capsize=3, label=name)
    level = int(results["bootstrap"]["confidence"] * 100)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 10.5)
    ax.set_ylabel(f"judge score (1-10), {level}% bootstrap CI")
    ax.set_title(f"{results['questions']} held-out questions")
    if models:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
