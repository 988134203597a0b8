"""`zephyr report PATH`: PNG plots of a training run's curves, read from its trainer_state.json.

PATH is a run's output folder (dSFT or dDPO), or a folder holding several (e.g. a pipeline root): every run
found gets `<run>/report/curves.png`. Panels: loss, and for DPO rewards/chosen and rewards/rejected, margins
and accuracies; train and eval curves on the same panel. For a sweep folder (`zephyr sweep`'s output_dir) it
also draws the objective against each swept parameter (`report/objective.png`) and writes the ranked table
with the plot (`report/sweep.md`).
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


def plot_sweep(sweep: Path) -> tuple[Path, list[str]]:
    """One panel per swept parameter: each finished trial's objective against its value, the best one starred."""
    summary = json.loads((sweep / "summary.json").read_text())
    metric, params = summary["objective"]["metric"], summary["space"]
    done = [t for t in summary["trials"] if t["value"] is not None]  # ranked best first by `zephyr sweep`
    if not done:
        raise ValueError(f"{sweep}: no trial of this sweep has finished yet")
    fig, axes = plt.subplots(1, len(params), figsize=(4.2 * len(params), 3.4), squeeze=False)
    for ax, name in zip(axes[0], params, strict=True):
        xs, ys = [t["params"][name] for t in done], [t["value"] for t in done]
        if all(isinstance(x, (int, float)) for x in xs):
            if min(xs) > 0 and max(xs) / min(xs) >= 20:  # learning rates and betas span decades
                ax.set_xscale("log")
        else:  # categories (loss types...) get one slot each
            labels = sorted({str(x) for x in xs})
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
            xs = [labels.index(str(x)) for x in xs]
        ax.scatter(xs, ys, s=18)
        ax.scatter(xs[:1], ys[:1], marker="*", s=160, color="tab:red", label=f"best (trial {done[0]['trial']})")
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.name}: {summary['objective']['direction']} {metric}")
    fig.tight_layout()
    out = sweep / "report" / "objective.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    table = (sweep / "summary.md").read_text() if (sweep / "summary.md").is_file() else ""
    (out.parent / "sweep.md").write_text(f"# {sweep.name}\n\n![objective](objective.png)\n\n{table}")
    return out, [f"{metric} vs {name}" for name in params]


def is_sweep(path: Path) -> bool:
    summary = path / "summary.json"
    return summary.is_file() and "trials" in json.loads(summary.read_text())


def find_runs(path: Path) -> list[Path]:
    if (path / "trainer_state.json").is_file():
        return [path]
    return sorted(p.parent for p in path.glob("*/trainer_state.json"))


def report(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    runs = find_runs(path)
    made = {}
    if is_sweep(path):
        out, panels = plot_sweep(path)
        made[str(out)] = panels
    elif not runs:
        raise FileNotFoundError(f"{path}: no training run here (no trainer_state.json in it or its subfolders)")
    for run in runs:
        out, panels = plot_run(run)
        made[str(out)] = panels
        logger.info("%s: %s", out, ", ".join(panels))
    return made


def main(argv: list[str]) -> dict[str, list[str]]:
    parser = argparse.ArgumentParser(prog="zephyr report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a run's output folder, a folder of runs (e.g. outputs/tiny), or a sweep's")
    args = parser.parse_args(argv)
    made = report(args.path)
    for out, panels in made.items():
        print(f"{out}: {', '.join(panels)}")
    return made
