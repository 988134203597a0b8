"""Dashboards and the run's own metrics file.

transformers already ships the wandb, TensorBoard, trackio and MLflow callbacks, all chosen by `report_to`;
what it lacks, and this module adds:
- wandb runs offline (files under the run folder) when no API key is set, instead of stopping to ask for one;
- every dashboard's files go under the run's output folder unless the user points them elsewhere;
- the run is named `<stage>-<recipe hash>` and tagged with both, so runs are found by what they did;
- `metrics.jsonl`: every logged dict, one JSON line each, written as training goes (the sweep reads it to prune
  a trial on its intermediate eval metrics; trainer_state.json is only written at checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger("zephyr")

METRICS_FILE = "metrics.jsonl"
DASHBOARDS = ("wandb", "tensorboard", "trackio", "mlflow")


def recipe_hash(values: dict[str, Any]) -> str:
    """A short hash of the resolved recipe, without the keys that only say where things go."""
    kept = {k: v for k, v in values.items() if k not in ("output_dir", "run_name", "logging_dir", "report_to")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]


def dashboards(report_to: str | list[str] | None) -> list[str]:
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "all" in names:
        return list(DASHBOARDS)
    return [n for n in names if n != "none"]


def mlflow_store(folder: Path) -> dict[str, str]:
    """MLFLOW_TRACKING_URI when set, else a plain folder under `folder`: no server or database needed. MLflow 3
    keeps its file store working only on request, hence MLFLOW_ALLOW_FILE_STORE for a file: URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (folder / "mlruns").as_uri()
    return {"MLFLOW_TRACKING_URI": uri, **({"MLFLOW_ALLOW_FILE_STORE": "true"} if uri.startswith("file:") else {})}


def set_default(name: str, value: str) -> None:
    if not os.environ.get(name):
        os.environ[name] = value


def redact_argv() -> None:
    """wandb and MLflow record the command line; a `hub_token=...` override must not ride along."""
    from zephyr.secrets import is_secret_key

    argv, hide_next = sys.argv, False
    for i, arg in enumerate(argv):
        key = arg.lstrip("-").split("=", 1)[0].split(".")[-1]
        if hide_next:
            argv[i], hide_next = "<redacted>", False
        elif is_secret_key(key) and "=" in arg:
            argv[i] = arg.split("=", 1)[0] + "=<redacted>"
        elif is_secret_key(key) and arg.startswith("--"):
            hide_next = True


def prepare_tracking(training_args: Any, stage: str, values: dict[str, Any]) -> dict[str, str]:
    """Name the run and set the dashboards' environment before the Trainer starts them; returns the tags."""
    redact_argv()
    digest = recipe_hash(values)
    tags = {"zephyr.stage": stage, "zephyr.recipe_hash": digest}
    tags.update(json.loads(os.environ.get("ZEPHYR_RUN_TAGS", "{}")))  # a sweep adds the trial's parameters
    if not training_args.run_name or training_args.run_name == training_args.output_dir:
        training_args.run_name = f"{stage}-{digest}"
    out = Path(training_args.output_dir).resolve()
    if training_args.project == "huggingface":  # transformers' default project name says nothing
        training_args.project = os.environ.get("ZEPHYR_PROJECT", "zephyr")
    project = training_args.project
    used = dashboards(training_args.report_to)
    if "wandb" in used:
        if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
            os.environ["WANDB_MODE"] = "offline"
            logger.info("wandb: no WANDB_API_KEY, logging offline to %s/wandb (`wandb sync` uploads it)", out)
        set_default("WANDB_DIR", str(out))
        set_default("WANDB_PROJECT", project)
        set_default("WANDB_TAGS", ",".join(f"{k}={v}" for k, v in tags.items()))
    if "tensorboard" in used:
        set_default("TENSORBOARD_LOGGING_DIR", str(out / "runs" / training_args.run_name))
    if "mlflow" in used:
        os.environ.update(mlflow_store(out))
        set_default("MLFLOW_EXPERIMENT_NAME", project)
        os.environ["MLFLOW_TAGS"] = json.dumps({**json.loads(os.environ.get("MLFLOW_TAGS", "{}")), **tags})
    if "trackio" in used:
        set_default("TRACKIO_DIR", str(out / "trackio"))
    return tags


class MetricsFileCallback(TrainerCallback):
    """Appends every log (train and eval) to `<output_dir>/metrics.jsonl` as it happens, on the main process."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / METRICS_FILE

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class ReopenMLflowRun(TrainerCallback):
    """transformers' MLflow callback ends its run when training ends, so the stage's final evaluate() would land
    in a new, randomly named run; reopen the training run so the final eval metrics sit next to the curves."""

    def on_train_end(self, args, state, control, **kwargs):
        import mlflow

        last = mlflow.last_active_run()
        if state.is_world_process_zero and last is not None and mlflow.active_run() is None:
            mlflow.start_run(run_id=last.info.run_id)


def tracking_callbacks(training_args: Any) -> list[TrainerCallback]:
    """Ours, added after transformers' dashboard callbacks (so ReopenMLflowRun runs after MLflow's on_train_end)."""
    callbacks: list[TrainerCallback] = [MetricsFileCallback(training_args.output_dir)]
    if "mlflow" in dashboards(training_args.report_to):
        callbacks.append(ReopenMLflowRun())
    return callbacks


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
