"""`zephyr report PATH`: PNG plots of a training run's curves, read from its trainer_state.json.

PATH is a run's output folder (dSFT or dDPO), or a folder holding several (e.g. a pipeline root): every run
found gets `<run>/report/curves.png`. Panels: loss, and for DPO rewards/chosen and rewards/rejected, margins
and accuracies; train and eval curves on the same panel.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger("zephyr.report")

# panel title -> metrics drawn on it (train name; eval is the same with an "eval_" prefix)
PANELS = {
    "loss": ["loss"],
    "rewards": ["rewards/chosen", "rewards/rejected"],
    "reward margin": ["rewards/margins"],
    "reward accuracy": ["rewards/accuracies"],
}


def series(history: list[dict], metric: str) -> tuple[list[float], list[float]]:
    points = [(h["step"], h[metric]) for h in history if metric in h and "step" in h]
    return [p[0] for p in points], [p[1] for p in points]


def plot_run(run: Path) -> tuple[Path, list[str]]:
    """Draw the panels this run has data for; return the PNG path and the panel titles."""
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    panels = [(title, metrics) for title, metrics in PANELS.items()
              if any(series(history, m)[0] or series(history, f"eval_{m}")[0] for m in metrics)]
    if not panels:
        raise ValueError(f"{run}: trainer_state.json has no logged metrics to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, metrics) in zip(axes[0], panels, strict=True):
        for metric in metrics:
            for name, style in ((metric, "-"), (f"eval_{metric}", "o--")):
                steps, values = series(history, name)
                if steps:
                    ax.plot(steps, values, style, label=name, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(run.name)
    fig.tight_layout()
    out = run / "report" / "curves.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out, [title for title, _ in panels]


def find_runs(path: Path) -> list[Path]:
    if (path / "trainer_state.json").is_file():
        return [path]
    return sorted(p.parent for p in path.glob("*/trainer_state.json"))


def report(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    runs = find_runs(path)
    if not runs:
        raise FileNotFoundError(f"{path}: no training run here (no trainer_state.json in it or its subfolders)")
    made = {}
    for run in runs:
        out, panels = plot_run(run)
        made[str(out)] = panels
        logger.info("%s: %s", out, ", ".join(panels))
    return made


def main(argv: list[str]) -> dict[str, list[str]]:
    parser = argparse.ArgumentParser(prog="zephyr report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a run's output folder, or a folder of runs (e.g. outputs/tiny)")
    args = parser.parse_args(argv)
    made = report(args.path)
    for out, panels in made.items():
        print(f"{out}: {', '.join(panels)}")
    return made
