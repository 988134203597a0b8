"""`zephyr sweep SWEEP.yaml`: hyperparameter search over any recipe key, on an Optuna study.

    base: recipes/tiny/dpo.yaml          # the stage recipe every trial starts from
    stage: dpo                           # a training stage (sft, dpo, orpo, simpo, kto, rm), aif or eval
    output_dir: outputs/sweeps/tiny-dpo  # trial-<n>/ folders, study.db, summary
    space:                               # any recipe key (dotted for nested ones)
      beta: {choices: [0.05, 0.1, 0.3]}
      learning_rate: {low: 5.0e-5, high: 5.0e-4, log: true}
    strategy: grid                       # grid (choices only), random, or tpe
    trials: 6                            # random/tpe; grid runs every combination
    objective: {metric: eval_rewards/accuracies, direction: maximize}
    overrides: {max_steps: 20}           # fixed for every trial
    storage: null                        # default sqlite:///<output_dir>/study.db; any URL (postgresql://...)
    parallel: 2                          # trials at once (CPU: processes sharing the cores; GPU: 0 = one per GPU)
    pruning: {type: median, n_startup_trials: 2}   # stop trials whose intermediate eval metric lags

Each trial is its own process (`python -m zephyr.cli STAGE base overrides`, under `accelerate launch` when
`accelerate_config` is set), in its own folder. A trial that fails is recorded with its error and the sweep goes
on. Rerunning the same command resumes: finished trials are kept, and a trial a killed sweep left running is run
again with the same parameters (and the same folder, so a training stage resumes from its last checkpoint).
Dashboards named in the recipe's `report_to` get the trials grouped (wandb group, MLflow parent run, trackio
project, one TensorBoard folder) and tagged with their parameters.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from zephyr.recipe import RecipeError, build_configs, read_yaml
from zephyr.stages import STAGES
from zephyr.tracking import dashboards, mlflow_store, read_metrics

logger = logging.getLogger("zephyr.sweep")


@dataclass
class Objective:
    metric: str = field(metadata={"help": "A key of the trial's all_results.json, or a dotted path in eval's "
                                  "results.json (models.dpo.score.mean)."})
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass
class Pruning:
    type: Literal["none", "median", "percentile", "hyperband"] = field(
        default="none", metadata={"help": "Optuna pruner fed the objective metric at every eval of a trial."})
    n_startup_trials: int = field(default=2, metadata={"help": "Trials that finish before any is pruned."})
    n_warmup_steps: int = field(default=0, metadata={"help": "Steps before a trial may be pruned."})
    percentile: float = field(default=25.0, metadata={"help": "percentile: keep trials above this percentile."})


@dataclass
class SweepConfig:
    base: str = field(metadata={"help": "The stage recipe every trial starts from."})
    stage: Literal[tuple(STAGES)] = field(  # the stages' table, zephyr/stages/__init__.py
        metadata={"help": "Which stage a trial runs."})
    output_dir: str = field(metadata={"help": "Trial folders, the study database and the summary go here."})
    space: dict[str, Any] = field(metadata={"help": "key: {choices: [...]} or {low, high, log, int}."})
    objective: Objective = field(metadata={"help": "What to optimize."})
    strategy: Literal["grid", "random", "tpe"] = "tpe"
    trials: int = field(default=10, metadata={"help": "Trials for random/tpe (grid runs every combination)."})
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"help": "Fixed for every trial."})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL; default SQLite in output_dir."})
    seed: int = field(default=0, metadata={"help": "Sampler seed."})
    parallel: int = field(default=1, metadata={
        "help": "Trials run at once. With GPUs each trial gets gpus_per_trial of them, and 0 means as many trials "
                "as that allows; on CPU, N processes share the cores (each gets cores/N threads)."})
    gpus_per_trial: int = field(default=1, metadata={"help": "GPUs given to each trial (CUDA_VISIBLE_DEVICES)."})
    accelerate_config: str | None = field(default=None, metadata={
        "help": "Launch each trial with `accelerate launch` and this config (a file or a name in "
                "accelerate_configs/), e.g. multi_gpu with gpus_per_trial: 2."})
    pruning: Pruning = field(default_factory=Pruning, metadata={"help": "Stop trials that lag early."})
    poll_seconds: float = field(default=1.0, metadata={"help": "How often a running trial's metrics are read."})


def suggest(trial, name: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    if spec.get("int"):
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))


def check_space(cfg: SweepConfig) -> None:
    """Every dimension of the search space can be drawn from, before any trial starts."""
    if not cfg.space:
        raise RecipeError("space: empty; name at least one recipe key to search over, e.g. "
                          "space: {learning_rate: {low: 1.0e-6, high: 1.0e-4, log: true}}")
    for name, spec in cfg.space.items():
        where = f"space.{name}"
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise RecipeError(f"{where}: expected {{choices: [...]}} or {{low: ..., high: ...}}, got {spec!r}")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise RecipeError(f"{where}.choices: expected a non-empty list of values, got {spec['choices']!r}")
            continue
        if cfg.strategy == "grid":
            raise RecipeError(f"{where}: a grid needs choices, not a range")
        try:  # YAML reads 1e-4 (no dot) as a string: take any number's spelling
            low, high = (float(v) if not isinstance(v, bool) else None for v in (spec["low"], spec["high"]))
        except (TypeError, ValueError):
            low = high = None
        if low is None or high is None:
            raise RecipeError(f"{where}: low and high must be numbers, got low={spec['low']!r}, "
                              f"high={spec['high']!r}")
        if low > high:
            raise RecipeError(f"{where}: low ({low}) is above high ({high})")
        if spec.get("log") and low <= 0:
            raise RecipeError(f"{where}: a log-scale range needs low > 0, got {low}")
        if spec.get("int") and (int(low) != low or int(high) != high):
            raise RecipeError(f"{where}: int: true needs whole-number bounds, got low={low}, high={high}")


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


def trial_command(cfg: SweepConfig, params: dict[str, Any], folder: Path, number: int) -> list[str]:
    overrides = {**cfg.overrides, **params, "output_dir": str(folder),
                 "run_name": f"{Path(cfg.output_dir).name}-trial-{number}"}
    launch = ["--accelerate-config", cfg.accelerate_config] if cfg.accelerate_config else []
    return [sys.executable, "-m", "zephyr.cli", cfg.stage, cfg.base, *launch,
            *(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items())]


def kill_tree(proc: subprocess.Popen) -> None:
    """Stop a trial and whatever it launched (accelerate starts one process per rank)."""
    import psutil  # an accelerate dependency

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.kill()  # a no-op once it has exited
    proc.wait()


def run_trial(cfg: SweepConfig, trial, params: dict[str, Any], folder: Path, env: dict[str, str]) -> float:
    """Run one trial's process; while it runs, feed its eval metrics to the pruner (and stop it if told to)."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    reported: set[int] = set()
    with open(folder / "trial.log", "a") as log:
        proc = subprocess.Popen(trial_command(cfg, params, folder, trial.number), stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(cfg.poll_seconds)
            if cfg.pruning.type == "none":
                continue
            for row in read_metrics(folder):
                step, value = row.get("step"), row.get(cfg.objective.metric)
                if value is None or step in reported:
                    continue
                reported.add(step)
                with STUDY_LOCK:
                    trial.report(float(value), step)
                    prune = trial.should_prune()
                if prune:
                    kill_tree(proc)
                    trial.set_user_attr("pruned_at", step)
                    raise optuna.TrialPruned(f"{cfg.objective.metric} = {value:.4g} at step {step}")
    if proc.returncode != 0:
        tail = (folder / "trial.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"exit code {proc.returncode}: " + " | ".join(tail))
    return read_objective(folder, cfg.objective.metric)


def device_slots(cfg: SweepConfig) -> list[dict[str, str]]:
    """The environment of each concurrent trial: its own GPUs, or its share of the CPU cores."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g for g in visible.split(",") if g] if visible is not None else [str(i) for i in range(gpu_count())]
    if gpus:
        fit = len(gpus) // cfg.gpus_per_trial
        if fit == 0:
            raise RecipeError(f"gpus_per_trial: {cfg.gpus_per_trial}, but only {len(gpus)} GPU(s) are visible")
        n = fit if cfg.parallel == 0 else min(cfg.parallel, fit)
        if cfg.parallel > fit:
            logger.warning("parallel: %d, but %d GPUs fit only %d trial(s) at once", cfg.parallel, len(gpus), fit)
        per = cfg.gpus_per_trial
        return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per:(i + 1) * per])} for i in range(n)]
    n = max(cfg.parallel, 1)
    threads = str(max((os.cpu_count() or 1) // n, 1))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(n)]


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def make_pruner(cfg: SweepConfig):
    import optuna

    p = cfg.pruning
    return {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials,
                                                      n_warmup_steps=p.n_warmup_steps),
        "percentile": lambda: optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials,
                                                              n_warmup_steps=p.n_warmup_steps),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(),
    }[p.type]()


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
                               direction=cfg.objective.direction, load_if_exists=True,
                               pruner=make_pruner(cfg))


def requeue_interrupted(study) -> int:
    """Trials that a killed sweep on this machine left RUNNING: queue their parameters again, in the same folder
    (a training stage then resumes from its last checkpoint), and mark them failed. The queued copy names the
    interrupted trial in its `rerun_of` attribute, which is how it is told apart from a trial that failed on its
    own. Trials that workers on other machines are running (a shared PostgreSQL study) are left alone: rerunning
    there requeues theirs."""
    import optuna

    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    requeued = rerun_trials(trials)  # by a sweep killed after queueing the copy, before marking the original
    stale = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING
             and ("worker" not in t.user_attrs or worker_is_dead(t.user_attrs["worker"], host))]
    for t in stale:
        if t.number not in requeued:
            study.enqueue_trial(t.params, user_attrs={"folder": t.user_attrs.get("folder"), "rerun_of": t.number,
                                                      "queued_params": t.params})
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return len(stale)


def rerun_trials(trials) -> set[int]:
    """Numbers of the trials a killed sweep interrupted and queued again (older sweeps wrote an error instead)."""
    return ({t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}
            | {t.number for t in trials if "interrupted" in t.user_attrs.get("error", "")})


def worker_is_dead(worker: str, host: str) -> bool:
    """`worker` is "host:pid" of the sweep process that ran a trial; only this host's can be checked."""
    worker_host, _, pid = worker.rpartition(":")
    if worker_host != host:
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        pass
    return False


def is_finished(t, rerun: set[int]) -> bool:
    """Completed, or failed on its own (not merely interrupted by a killed sweep and queued again: `rerun`)."""
    import optuna

    return t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) or (
        t.state == optuna.trial.TrialState.FAIL and t.number not in rerun)


def enqueue_grid(cfg: SweepConfig, study) -> None:
    """Queue every grid point that has neither finished nor is already queued."""
    import optuna

    names = list(cfg.space)
    rerun = rerun_trials(study.trials)
    taken = {tuple(t.params.get(n) for n in names) for t in study.trials if is_finished(t, rerun)}
    taken |= {tuple(queued_params(t).get(n) for n in names)
              for t in study.trials if t.state == optuna.trial.TrialState.WAITING}
    for point in itertools.product(*(cfg.space[n]["choices"] for n in names)):
        if point not in taken:
            params = dict(zip(names, point, strict=True))
            study.enqueue_trial(params, user_attrs={"queued_params": params})


def queued_params(t) -> dict[str, Any]:
    """The parameters a WAITING trial was queued with (Optuna's own record of them is an internal system
    attribute, read only for trials queued by older zephyr versions)."""
    return t.user_attrs.get("queued_params") or t.system_attrs.get("fixed_params", {})


def total_trials(cfg: SweepConfig) -> int:
    if cfg.strategy == "grid":
        return len(list(itertools.product(*(v["choices"] for v in cfg.space.values()))))
    return cfg.trials


# Optuna's storage objects are shared by the worker threads; ask/tell/report go through this lock (two threads
# asking at once could both pop the same enqueued grid point).
STUDY_LOCK = threading.Lock()


def run_sweep(cfg: SweepConfig) -> list[dict[str, Any]]:
    import optuna

    check_space(cfg)
    study = make_study(cfg)
    if (n := requeue_interrupted(study)):
        logger.info("resuming: %d interrupted trial(s) queued again", n)
    if cfg.strategy == "grid":
        enqueue_grid(cfg, study)
    waiting = sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    rerun = rerun_trials(study.trials)
    finished = sum(is_finished(t, rerun) for t in study.trials)
    budget = [waiting if cfg.strategy == "grid" else max(total_trials(cfg) - finished, waiting)]
    group_env = dashboard_group(cfg)

    def worker(slot: dict[str, str]) -> None:
        """Run trials on one device slot until the budget is spent."""
        while True:
            with STUDY_LOCK:
                if budget[0] <= 0:
                    return
                budget[0] -= 1
                trial = study.ask()
            state, value = run_one(cfg, trial, slot, group_env)
            with STUDY_LOCK:
                study.tell(trial, value, state=state)

    slots = device_slots(cfg)
    with ThreadPoolExecutor(len(slots)) as pool:
        for future in [pool.submit(worker, slot) for slot in slots]:
            future.result()
    rows = summarize(cfg, study)
    if any(r["state"] == "COMPLETE" for r in rows):
        from zephyr.report import plot_sweep

        plot, _ = plot_sweep(Path(cfg.output_dir))
        best = export_best(cfg, Path(cfg.output_dir) / "best_recipe.yaml")
        logger.info("objective plots: %s; best recipe: %s (run it: zephyr %s %s)", plot, best, cfg.stage, best)
    return rows


def run_one(cfg: SweepConfig, trial, slot: dict[str, str], group_env: dict[str, str]) -> tuple[Any, float | None]:
    """One trial in its own folder and process: (state, objective value) for study.tell."""
    import optuna

    params = {name: suggest(trial, name, spec) for name, spec in cfg.space.items()}
    # a trial queued again after a kill runs in the interrupted one's folder, to resume from its checkpoint
    folder = Path(trial.user_attrs.get("folder") or Path(cfg.output_dir) / f"trial-{trial.number}")
    trial.set_user_attr("folder", str(folder))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    tags = {"zephyr.sweep": Path(cfg.output_dir).name, "zephyr.trial": str(trial.number),
            **{f"param.{k}": str(v) for k, v in params.items()}}
    env = {**os.environ, **group_env, **slot, "ZEPHYR_RUN_TAGS": json.dumps(tags)}
    if "TENSORBOARD_LOGGING_DIR" in group_env:  # one folder for the whole sweep, one subfolder per trial
        env["TENSORBOARD_LOGGING_DIR"] = str(Path(group_env["TENSORBOARD_LOGGING_DIR"]) / folder.name)
    where = f" on GPU {slot['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in slot else ""
    logger.info("trial %d %s starting%s", trial.number, params, where)
    try:
        value = run_trial(cfg, trial, params, folder, env)
    except (RuntimeError, FileNotFoundError, KeyError, ValueError) as err:
        trial.set_user_attr("error", str(err)[-500:])
        logger.warning("trial %d %s failed: %s", trial.number, params, err)
        return optuna.trial.TrialState.FAIL, None
    except optuna.TrialPruned as pruned:
        logger.info("trial %d %s pruned: %s", trial.number, params, pruned)
        return optuna.trial.TrialState.PRUNED, None
    logger.info("trial %d %s: %s = %.4g", trial.number, params, cfg.objective.metric, value)
    return optuna.trial.TrialState.COMPLETE, value


def dashboard_group(cfg: SweepConfig) -> dict[str, str]:
    """Environment that groups the trials on each dashboard the base recipe reports to."""
    recipe = {**read_yaml(cfg.base), **cfg.overrides}
    used = dashboards(recipe.get("report_to"))
    name, out = Path(cfg.output_dir).name, Path(cfg.output_dir).resolve()
    env = {"ZEPHYR_PROJECT": os.environ.get("ZEPHYR_PROJECT", name)}  # trackio project, wandb project
    if "wandb" in used:
        env["WANDB_RUN_GROUP"] = name
    if "tensorboard" in used:
        env["TENSORBOARD_LOGGING_DIR"] = os.environ.get("TENSORBOARD_LOGGING_DIR", str(out / "runs"))
    if "trackio" in used:
        env["TRACKIO_DIR"] = os.environ.get("TRACKIO_DIR", str(out / "trackio"))
    if "mlflow" in used:
        env.update(mlflow_parent_run(cfg, out))
    return env


def mlflow_parent_run(cfg: SweepConfig, out: Path) -> dict[str, str]:
    """One MLflow run for the sweep; each trial's run names it as parent (the UI nests them under it)."""
    import mlflow

    env = {**mlflow_store(out), "MLFLOW_EXPERIMENT_NAME": os.environ.get("MLFLOW_EXPERIMENT_NAME", out.name)}
    os.environ.update({k: v for k, v in env.items() if k == "MLFLOW_ALLOW_FILE_STORE"})  # for this process's client
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    experiment = mlflow.set_experiment(env["MLFLOW_EXPERIMENT_NAME"])
    marker = out / "mlflow_parent_run"  # the same parent across resumes of the sweep
    if marker.is_file():
        run_id = marker.read_text().strip()
    else:
        client = mlflow.MlflowClient()
        run_id = client.create_run(experiment.experiment_id, run_name=f"sweep-{out.name}",
                                   tags={"zephyr.sweep": out.name, "zephyr.stage": cfg.stage}).info.run_id
        client.log_dict(run_id, {"space": cfg.space, "objective": vars(cfg.objective)}, "sweep.json")
        marker.write_text(run_id)
    env["MLFLOW_TAGS"] = json.dumps({"mlflow.parentRunId": run_id})
    return env


def summarize(cfg: SweepConfig, study) -> list[dict[str, Any]]:
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
    rerun = rerun_trials(study.trials)
    interrupted = [t.number for t in study.trials if t.state in done and not is_finished(t, rerun)]  # and run again
    rows = [{"trial": t.number, "params": t.params, "value": t.value, "state": t.state.name,
             "error": t.user_attrs.get("error"), "pruned_at": t.user_attrs.get("pruned_at"),
             "folder": t.user_attrs.get("folder")}
            for t in study.trials if t.state in done and t.number not in interrupted]
    sign = -1 if cfg.objective.direction == "maximize" else 1
    rows.sort(key=lambda r: (r["value"] is None, sign * (r["value"] or 0)))
    out = Path(cfg.output_dir)
    saved = reference_compute_saved([Path(r["folder"]) for r in rows if r["folder"]])
    summary = {"objective": vars(cfg.objective), "space": list(cfg.space), "trials": rows,
               "interrupted_and_rerun": interrupted, "reference_cache": saved}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"| rank | trial | {' | '.join(cfg.space)} | {cfg.objective.metric} |",
             "|---|---|" + "---|" * (len(cfg.space) + 1)]
    for rank, r in enumerate(rows, 1):
        if r["state"] == "PRUNED":
            value = f"pruned at step {r['pruned_at']}"
        else:
            value = f"{r['value']:.4g}" if r["value"] is not None else f"failed: {r['error']}"
        lines.append(f"| {rank} | {r['trial']} | " + " | ".join(str(r["params"].get(k)) for k in cfg.space)
                     + f" | {value} |")
    if interrupted:
        lines += ["", f"Interrupted by a killed sweep and run again: trial(s) {interrupted}."]
    if saved["reused_passes"]:
        lines += ["", f"Reference log-probs (train and eval passes): computed {saved['computed_passes']} time(s) "
                  f"in {saved['computed_seconds']:.1f} s, read from the shared cache {saved['reused_passes']} "
                  f"time(s), saving {saved['saved_seconds']:.1f} s of reference forward passes"
                  + (f" (+ {saved['reused_without_recorded_cost']} cached pass(es) of unrecorded cost)."
                     if saved["reused_without_recorded_cost"] else ".")]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    logger.info("sweep results (%s %s):\n%s", cfg.objective.direction, cfg.objective.metric, "\n".join(lines))
    return rows


def reference_compute_saved(folders: list[Path]) -> dict[str, float]:
    """Add up the trials' reference passes (reference_logps.json, written by the dDPO stage): how many ran, how
    many came from the shared cache, and what computing those would have cost (measured when it was computed)."""
    computed = reused = unknown = 0
    seconds = saved = 0.0
    for folder in folders:
        path = folder / "reference_logps.json"
        for split in json.loads(path.read_text()).values() if path.is_file() else []:
            if split["computed"]:
                computed, seconds = computed + 1, seconds + split["seconds"]
            else:
                reused, saved = reused + 1, saved + (split.get("cost_seconds") or 0.0)
                unknown += split.get("cost_seconds") is None  # cached by a zephyr that did not record costs
    return {"computed_passes": computed, "computed_seconds": round(seconds, 3), "reused_passes": reused,
            "saved_seconds": round(saved, 3), "reused_without_recorded_cost": unknown}


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
    (cfg,) = build_configs(read_yaml(args.sweep), (SweepConfig,), source=args.sweep)
    if args.export_best:
        print(f"best recipe written to {export_best(cfg, Path(args.export_best))}")
        return []
    return run_sweep(cfg)
