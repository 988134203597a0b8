"""Dashboards: one dDPO run reporting to TensorBoard, wandb (offline), trackio and MLflow (file store) at once
writes each one's real files with TRL's metric names, the stage and recipe hash recorded, and none of the fake
secrets in the environment or the recipe lands in any file the run wrote."""

from __future__ import annotations

import importlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wandb_run_record

from zephyr.tracking import prepare_tracking, recipe_hash

REPO = Path(__file__).resolve().parents[1]
SECRETS = {
    "HF_TOKEN": "hf_FAKEenvTOKEN1234567890",
    "WANDB_API_KEY": "fakewandbkey0123456789abcdef0123456789abcd",
    "OPENAI_API_KEY": "sk-FAKEopenaiKEY1234567890",
}
HUB_TOKEN = "hf_FAKEhubTOKENoverride0987"


def run_dpo(tiny, out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "zephyr.cli", "dpo", f"model_name_or_path={tiny / 'model'}", "dtype=float32",
           f"dataset_name={tiny / 'data' / 'prefs'}", "dataset_train_split=train_prefs",
           "dataset_test_split=test_prefs", "max_train_samples=16", "max_eval_samples=8", "long_rows=drop",
           "max_length=128", "per_device_train_batch_size=4", "max_steps=4", "logging_steps=1",
           "eval_strategy=steps", "eval_steps=2", "save_strategy=steps", "save_steps=2", f"output_dir={out}",
           *overrides]
    return subprocess.run(cmd, cwd=REPO, env={**(env or os.environ), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dashboard_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dash") / "dpo"
    unset = ("WANDB_DIR", "TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "TRACKIO_DIR", "MLFLOW_TAGS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(SECRETS, WANDB_MODE="offline")  # a key is set: without WANDB_MODE it would go online
    proc = run_dpo(tiny_dir, out, "report_to=[tensorboard,wandb,trackio,mlflow]", f"hub_token={HUB_TOKEN}",
                   env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def test_tensorboard_events_hold_train_and_eval_metrics(dashboard_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = dashboard_run
    (folder,) = (out / "runs").iterdir()
    assert folder.name.startswith("dpo-")  # run name: stage + recipe hash
    tags = set()
    for events in folder.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "train/rewards/accuracies", "train/learning_rate", "eval/loss",
            "eval/rewards/margins"} <= tags
    steps = [e.step for events in folder.glob("events*") for e in scalars(events, "train/loss")]
    assert steps == [1, 2, 3, 4]


def scalars(events: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events))
    acc.Reload()
    return acc.Scalars(tag) if tag in acc.Tags()["scalars"] else []


def test_wandb_writes_an_offline_run_with_the_metrics_and_tags(dashboard_run):
    out, _ = dashboard_run
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    for name in (b"train/loss", b"train/rewards/margins", b"eval/rewards/accuracies"):
        assert name in data, name
    run = wandb_run_record(run_file)
    assert run.project == "zephyr" and run.display_name == next((out / "runs").iterdir()).name
    assert "zephyr.stage=dpo" in run.tags and any(t.startswith("zephyr.recipe_hash=") for t in run.tags)


def test_trackio_database_holds_the_run_and_its_metrics(dashboard_run):
    out, _ = dashboard_run
    (db,) = (out / "trackio").glob("*.db")
    assert db.name == "zephyr.db"  # project: zephyr (not transformers' default "huggingface")
    rows = sqlite3.connect(db).execute("select run_name, metrics from metrics").fetchall()
    names = set().union(*(json.loads(m) for _, m in rows))
    assert {"train/loss", "train/rewards/chosen", "eval/loss"} <= names
    assert {r for r, _ in rows} == {next((out / "runs").iterdir()).name}  # final eval joins the same run


def test_mlflow_file_store_has_one_run_with_metrics_params_and_tags(dashboard_run):
    out, _ = dashboard_run
    runs = [p for p in (out / "mlruns").glob("*/*") if (p / "metrics").is_dir()]
    assert len(runs) == 1  # the final evaluate() goes into the training run, not a new one
    run = runs[0]
    metrics = {str(p.relative_to(run / "metrics")) for p in (run / "metrics").rglob("*") if p.is_file()}
    assert {"loss", "rewards/accuracies", "eval_loss", "eval_rewards/margins"} <= metrics
    assert [line.split()[2] for line in (run / "metrics" / "loss").read_text().splitlines()] == ["1", "2", "3", "4"]
    assert (run / "params" / "beta").read_text() == "0.1"
    assert (run / "tags" / "zephyr.stage").read_text() == "dpo"
    assert len((run / "tags" / "zephyr.recipe_hash").read_text()) == 10


def test_no_secret_reaches_any_file_or_log(dashboard_run):
    out, logs = dashboard_run
    secrets = [*SECRETS.values(), HUB_TOKEN]
    scanned = 0
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()  # binary stores too: .wandb, sqlite, tfevents, training_args.bin pickles
            scanned += 1
            for secret in secrets:
                assert secret.encode() not in data, f"{secret} in {path}"
    assert scanned > 20 and (out / "training_args.bin").is_file() and (out / "checkpoint-2").is_dir()
    assert not any(secret in logs for secret in secrets)


def test_training_args_bin_loads_with_weights_only_and_has_no_token(dashboard_run):
    import torch

    out, _ = dashboard_run
    path = out / "checkpoint-2" / "training_args.bin"
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # classes only, nothing callable by name
    assert {n.split(".")[0] for n in names} <= {"transformers", "accelerate", "zephyr", "trl"}, names
    classes = [getattr(importlib.import_module(module), attr) for module, attr in (n.rsplit(".", 1) for n in names)]
    with torch.serialization.safe_globals(classes):
        args = torch.load(path, weights_only=True)
    assert args.hub_token is None and args.beta == 0.1 and args.report_to == ["tensorboard", "wandb", "trackio",
                                                                              "mlflow"]


def test_wandb_goes_offline_without_a_key_and_tags_carry_the_stage(tmp_path, monkeypatch):
    from zephyr.configs import ZephyrDPOConfig

    monkeypatch.setattr(os, "environ", dict(os.environ))  # what prepare_tracking sets stays in this test
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_TAGS", "WANDB_PROJECT", "ZEPHYR_RUN_TAGS"):
        os.environ.pop(name, None)
    os.environ["ZEPHYR_RUN_TAGS"] = json.dumps({"param.beta": "0.2"})
    args = ZephyrDPOConfig(output_dir=str(tmp_path / "run"), report_to=["wandb"])
    tags = prepare_tracking(args, "dpo", {"beta": 0.2, "output_dir": "anywhere"})
    digest = recipe_hash({"beta": 0.2, "output_dir": "elsewhere"})  # where it writes is not what it does
    assert tags == {"zephyr.stage": "dpo", "zephyr.recipe_hash": digest, "param.beta": "0.2"}
    assert args.run_name == f"dpo-{digest}" and args.project == "zephyr"
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_DIR"] == str((tmp_path / "run").resolve())
    assert os.environ["WANDB_TAGS"] == f"zephyr.stage=dpo,zephyr.recipe_hash={digest},param.beta=0.2"
    del os.environ["WANDB_MODE"]
    os.environ["WANDB_API_KEY"] = "k" * 40  # with a key: online, as wandb itself decides
    prepare_tracking(ZephyrDPOConfig(output_dir=str(tmp_path / "r2"), report_to="wandb"), "dpo", {})
    assert "WANDB_MODE" not in os.environ
