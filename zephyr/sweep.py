"""`zephyr sweep SWEEP.yaml`: hyperparameter search over any recipe key, on an Optuna study.

    base: recipes/tiny/dpo.yaml          # the stage recipe every trial starts from
    stage: dpo                           # sft, dpo, aif or eval
    output_dir: outputs/sweeps/tiny-dpo  # trial-<n>/ folders, study.db, summary
    space:                               # any recipe key (dotted for nested ones)
      beta: {choices: [0.05, 0.1, 0.3]}
      learning_rate: {low: 5.0e-5, high: 5.0e-4, log: true}
    strategy: grid                       # grid (choices only), random, or tpe
    trials: 6                            # random/tpe; grid runs every combination
    objective: {metric: eval_rewards/accuracies, direction: maximize}
    overrides: {max_steps: 20}           # fixed for every trial
    storage: null                        # default sqlite:///<output_dir>/study.db; any URL (postgresql://...)

Each trial is its own process (`python -m zephyr.cli STAGE base overrides`), in its own folder. A trial that
fails is recorded with its error and the sweep goes on. Rerunning the same command resumes: finished trials are
kept, and a trial a killed sweep left running is run again with the same parameters (and the same folder, so a
training stage resumes from its last checkpoint).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from zephyr.recipe import RecipeError, build_configs, read_yaml

logger = logging.getLogger("zephyr.sweep")


@dataclass
class Objective:
    metric: str = field(metadata={"help": "A key of the trial's all_results.json, or a dotted path in eval's "
                                  "results.json (models.dpo.score.mean)."})
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass
class SweepConfig:
    base: str = field(metadata={"help": "The stage recipe every trial starts from."})
    stage: Literal["sft", "dpo", "aif", "eval"] = field(metadata={"help": "Which stage a trial runs."})
    output_dir: str = field(metadata={"help": "Trial folders, the study database and the summary go here."})
    space: dict[str, Any] = field(metadata={"help": "key: {choices: [...]} or {low, high, log, int}."})
    objective: Objective = field(metadata={"help": "What to optimize."})
    strategy: Literal["grid", "random", "tpe"] = "tpe"
    trials: int = field(default=10, metadata={"help": "Trials for random/tpe (grid runs every combination)."})
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"help": "Fixed for every trial."})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL; default SQLite in output_dir."})
    seed: int = field(default=0, metadata={"help": "Sampler seed."})


def suggest(trial, name: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if spec.get("int"):
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))


def check_space(cfg: SweepConfig) -> None:
    for name, spec in cfg.space.items():
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise RecipeError(f"space.{name}: expected {{choices: [...]}} or {{low: ..., high: ...}}, got {spec!r}")
        if cfg.strategy == "grid" and "choices" not in spec:
            raise RecipeError(f"space.{name}: a grid needs choices, not a range")


def read_objective(trial_dir: Path, metric: str) -> float:
    results = trial_dir / "all_results.json"
    if results.is_file():
        data = json.loads(results.read_text())
        if metric in data:
            return float(data[metric])
    value: Any = json.loads((trial_dir / "results.json").read_text())
    for part in metric.split("."):
        value = value[part]
    return float(value)


def run_trial(cfg: SweepConfig, params: dict[str, Any], folder: Path) -> float:
    overrides = {**cfg.overrides, **params, "output_dir": str(folder)}
    cmd = [sys.executable, "-m", "zephyr.cli", cfg.stage, cfg.base,
           *(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items())]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "trial.log", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        tail = (folder / "trial.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"exit code {code}: " + " | ".join(tail))
    return read_objective(folder, cfg.objective.metric)


def make_study(cfg: SweepConfig):
    import optuna

    samplers = {  # a grid is enqueued point by point (see run_sweep), so any sampler serves it
        "grid": lambda: optuna.samplers.RandomSampler(seed=cfg.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=cfg.seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=cfg.seed),
    }
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    storage = cfg.storage or f"sqlite:///{Path(cfg.output_dir).resolve() / 'study.db'}"
    return optuna.create_study(study_name=Path(cfg.output_dir).name, storage=storage, sampler=samplers[cfg.strategy](),
                               direction=cfg.objective.direction, load_if_exists=True)


def requeue_interrupted(study) -> int:
    """Trials a killed sweep left RUNNING: mark them failed and queue their parameters to run again."""
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted; rerun with the same parameters")
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)
    return len(stale)


def is_finished(t) -> bool:
    """Completed, or failed on its own (not merely interrupted by a killed sweep)."""
    import optuna

    return t.state == optuna.trial.TrialState.COMPLETE or (
        t.state == optuna.trial.TrialState.FAIL and "interrupted" not in t.user_attrs.get("error", ""))


def enqueue_grid(cfg: SweepConfig, study) -> None:
    """Queue every grid point that has neither finished nor is already queued."""
    import optuna

    names = list(cfg.space)
    taken = {tuple(t.params.get(n) for n in names) for t in study.trials if is_finished(t)}
    taken |= {tuple(t.system_attrs.get("fixed_params", {}).get(n) for n in names)
              for t in study.trials if t.state == optuna.trial.TrialState.WAITING}
    for point in itertools.product(*(cfg.space[n]["choices"] for n in names)):
        if point not in taken:
            study.enqueue_trial(dict(zip(names, point, strict=True)))


def total_trials(cfg: SweepConfig) -> int:
    if cfg.strategy == "grid":
        return len(list(itertools.product(*(v["choices"] for v in cfg.space.values()))))
    return cfg.trials


def run_sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    import optuna

    check_space(cfg)
    study = make_study(cfg)
    if (n := requeue_interrupted(study)):
        logger.info("resuming: %d interrupted trial(s) queued again", n)
    if cfg.strategy == "grid":
        enqueue_grid(cfg, study)

    def objective(trial) -> float:
        params = {name: suggest(trial, name, spec) for name, spec in cfg.space.items()}
        folder = Path(cfg.output_dir) / f"trial-{trial.number}"
        trial.set_user_attr("folder", str(folder))
        try:
            value = run_trial(cfg, params, folder)
        except (RuntimeError, FileNotFoundError, KeyError, ValueError) as err:
            trial.set_user_attr("error", str(err)[-500:])
            logger.warning("trial %d %s failed: %s", trial.number, params, err)
            raise TrialFailed(str(err)) from None
        logger.info("trial %d %s: %s = %.4g", trial.number, params, cfg.objective.metric, value)
        return value

    waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    finished = sum(is_finished(t) for t in study.trials)
    remaining = waiting if cfg.strategy == "grid" else max(total_trials(cfg) - finished, waiting)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(TrialFailed,))
    return summarize(cfg, study)


class TrialFailed(Exception):
    """A trial's process failed; the study records it and the sweep goes on."""


def summarize(cfg: SweepConfig, study) -> list[dict[str, Any]]:
    import optuna

    rows = [{"trial": t.number, "params": t.params, "value": t.value, "state": t.state.name,
             "error": t.user_attrs.get("error"), "folder": t.user_attrs.get("folder")}
            for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)]
    sign = -1 if cfg.objective.direction == "maximize" else 1
    rows.sort(key=lambda r: (r["value"] is None, sign * (r["value"] or 0)))
    out = Path(cfg.output_dir)
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=str))
    lines = [f"| rank | trial | {' | '.join(cfg.space)} | {cfg.objective.metric} |",
             "|---|---|" + "---|" * (len(cfg.space) + 1)]
    for rank, r in enumerate(rows, 1):
        value = f"{r['value']:.4g}" if r["value"] is not None else f"failed: {r['error']}"
        lines.append(f"| {rank} | {r['trial']} | " + " | ".join(str(r["params"].get(k)) for k in cfg.space)
                     + f" | {value} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    logger.info("sweep results (%s %s):\n%s", cfg.objective.direction, cfg.objective.metric, "\n".join(lines))
    return rows


def export_best(cfg: SweepConfig, path: Path) -> Path:
    """The base recipe with the fixed overrides and the best trial's parameters, as one YAML file."""
    study = make_study(cfg)
    recipe = read_yaml(cfg.base)
    for key, value in {**cfg.overrides, **study.best_trial.params}.items():
        recipe[key] = value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def main(argv: list[str]) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="zephyr sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep YAML")
    parser.add_argument("--export-best", metavar="FILE", help="write the best trial's full recipe and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    (cfg,) = build_configs(read_yaml(args.sweep), (SweepConfig,), source=args.sweep)
    if args.export_best:
        print(f"best recipe written to {export_best(cfg, Path(args.export_best))}")
        return []
    return run_sweep(cfg)
