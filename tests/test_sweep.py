"""`zephyr sweep`: a real Optuna study on SQLite with tiny dDPO trials: grid/random/TPE trial sets, a failing
trial recorded while the sweep goes on, resume after a kill, and the best recipe exported."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import wandb_run_record

from zephyr.recipe import RecipeError, build_configs
from zephyr.report import report
from zephyr.sweep import SweepConfig, device_slots, export_best, make_study, requeue_interrupted, run_sweep
from zephyr.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]


def sweep_config(tiny, out, space, strategy="grid", trials=4) -> dict:
    return {
        "base": str(REPO / "recipes" / "tiny" / "dpo.yaml"), "stage": "dpo", "output_dir": str(out),
        "space": space, "strategy": strategy, "trials": trials,
        "objective": {"metric": "eval_rewards/margins", "direction": "maximize"},
        "overrides": {"model_name_or_path": str(tiny / "model"), "dataset_name": str(tiny / "data" / "prefs"),
                      "max_train_samples": 16, "max_eval_samples": 8, "max_steps": 2, "save_strategy": "no",
                      "eval_strategy": "no", "logging_steps": 1},
    }


def config(values: dict) -> SweepConfig:
    (cfg,) = build_configs(values, (SweepConfig,))
    return cfg


@pytest.mark.slow
def test_grid_runs_every_combination_ranks_them_and_exports_the_best(tiny_dir, tmp_path):
    cfg = config(sweep_config(tiny_dir, tmp_path / "grid", {"beta": {"choices": [0.1, 0.5]},
                                                             "learning_rate": {"choices": [1e-4, 1e-3]}}))
    rows = run_sweep(cfg)
    assert sorted((r["params"]["beta"], r["params"]["learning_rate"]) for r in rows) == [
        (0.1, 1e-4), (0.1, 1e-3), (0.5, 1e-4), (0.5, 1e-3)]
    values = [r["value"] for r in rows]
    assert values == sorted(values, reverse=True) and all(r["state"] == "COMPLETE" for r in rows)
    assert (tmp_path / "grid" / "study.db").is_file() and (tmp_path / "grid" / "summary.md").is_file()
    best = yaml.safe_load(export_best(cfg, tmp_path / "best.yaml").read_text())
    assert (best["beta"], best["learning_rate"]) == (rows[0]["params"]["beta"], rows[0]["params"]["learning_rate"])
    assert best["loss_type"] == ["sigmoid"]  # the rest of the base recipe is kept
    assert yaml.safe_load((tmp_path / "grid" / "best_recipe.yaml").read_text()) == best  # written at the end
    assert (tmp_path / "grid" / "report" / "objective.png").is_file()
    assert run_sweep(cfg) == rows  # rerun: everything finished, nothing runs again


@pytest.mark.slow
def test_random_and_tpe_sample_the_space_and_a_failing_trial_is_recorded(tiny_dir, tmp_path):
    space = {"beta": {"low": 0.05, "high": 0.5, "log": True}, "loss_type": {"choices": ["sigmoid", "nonsense"]}}
    cfg = config(sweep_config(tiny_dir, tmp_path / "random", space, strategy="random", trials=3))
    rows = run_sweep(cfg)
    assert len(rows) == 3 and all(0.05 <= r["params"]["beta"] <= 0.5 for r in rows)
    for r in rows:  # an unknown loss type fails its trial; the sweep goes on
        if r["params"]["loss_type"] == "nonsense":
            assert r["state"] == "FAIL" and "exit code" in r["error"]
        else:
            assert r["state"] == "COMPLETE" and isinstance(r["value"], float)
    assert {r["state"] for r in rows} == {"COMPLETE", "FAIL"}  # seed 0 draws both: a failure, and the sweep goes on
    # TPE draws at random for its first 10 trials (optuna's n_startup_trials), the random sampler's draws with the
    # same seed, so its trials would repeat these; what differs is the study's sampler
    tpe = make_study(config(sweep_config(tiny_dir, tmp_path / "tpe", space, strategy="tpe", trials=1)))
    assert isinstance(tpe.sampler, optuna.samplers.TPESampler)
    assert [t.params for t in make_study(cfg).trials] == [r["params"] for r in sorted(rows, key=lambda r: r["trial"])]


@pytest.mark.slow
def test_killed_sweep_resumes_and_reruns_the_interrupted_trial_from_its_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "killed"
    values = sweep_config(tiny_dir, out, {"beta": {"choices": [0.1, 0.2]}})
    values["overrides"].update(max_steps=6, save_strategy="steps", save_steps=1)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = subprocess.Popen([sys.executable, "-m", "zephyr.cli", "sweep", str(path)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not any((out / "trial-1").glob("checkpoint-*")):  # trial 0 finished, trial 1 has saved a checkpoint
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running trial
    proc.wait()
    study = make_study(config(values))
    assert [t.state for t in study.trials][:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    rows = run_sweep(config(values))
    assert sorted(r["params"]["beta"] for r in rows) == [0.1, 0.2]  # each grid point done once
    assert {r["state"] for r in rows} == {"COMPLETE"}  # the interrupted attempt is not a result
    rerun = next(r for r in rows if r["folder"] == str(out / "trial-1"))  # same folder: resumed, not restarted
    assert rerun["trial"] != 1 and "resuming from" in (out / "trial-1" / "trial.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted_and_rerun"] == [1]
    assert "Interrupted by a killed sweep and run again: trial(s) [1]" in (out / "summary.md").read_text()


def test_a_trial_another_live_worker_runs_is_not_requeued(tmp_path):
    values = {"base": "b.yaml", "stage": "dpo", "output_dir": str(tmp_path / "s"),
              "space": {"beta": {"choices": [0.1]}}, "objective": {"metric": "m"}}
    study = make_study(config(values))
    here, elsewhere, dead = study.ask(), study.ask(), study.ask()
    here.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # alive: this very process
    elsewhere.set_user_attr("worker", "another-machine:1234")  # cannot be checked from here: left running
    dead.set_user_attr("worker", f"{socket.gethostname()}:{2**22 + 12345}")  # no such process
    assert requeue_interrupted(study) == 1
    states = [t.state.name for t in study.trials]
    assert states == ["RUNNING", "RUNNING", "FAIL", "WAITING"]


def test_requeueing_twice_after_a_kill_between_queueing_and_marking_queues_once(tmp_path):
    """A sweep killed after queueing an interrupted trial's copy, before marking the original failed: the next
    run marks it, without a second copy; the copy names it as rerun, so it is not counted as a failure."""
    values = {"base": "b.yaml", "stage": "dpo", "output_dir": str(tmp_path / "s"),
              "space": {"beta": {"choices": [0.1]}}, "objective": {"metric": "m"}}
    study = make_study(config(values))
    dead = study.ask()
    dead.set_user_attr("worker", f"{socket.gethostname()}:{2**22 + 12345}")  # no such process
    study.enqueue_trial({}, user_attrs={"rerun_of": dead.number})  # the copy, queued just before the kill
    assert requeue_interrupted(study) == 1
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert requeue_interrupted(study) == 0


@pytest.mark.slow
def test_parallel_trials_share_one_reference_pass_are_grouped_and_reported(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "cache"))  # a cold cache: the first trial must compute
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TAGS", "TENSORBOARD_LOGGING_DIR", "TRACKIO_DIR", "WANDB_DIR",
                 "WANDB_RUN_GROUP", "WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_TAGS", "ZEPHYR_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "par"
    values = sweep_config(tiny_dir, out, {"beta": {"choices": [0.1, 0.2, 0.3]}})
    values["parallel"] = 2
    values["overrides"]["report_to"] = ["mlflow", "tensorboard", "trackio", "wandb"]
    rows = run_sweep(config(values))
    assert sorted(r["params"]["beta"] for r in rows) == [0.1, 0.2, 0.3] and {r["state"] for r in rows} == {"COMPLETE"}
    t0, t1, _ = make_study(config(values)).trials
    assert t1.datetime_start < t0.datetime_complete  # two trials ran at once

    # the reference pass (train + eval split) ran once; the other trials read the shared cache
    saved = json.loads((out / "summary.json").read_text())["reference_cache"]
    assert (saved["computed_passes"], saved["reused_passes"]) == (2, 4) and saved["saved_seconds"] > 0
    assert "read from the shared cache 4 time(s)" in (out / "summary.md").read_text()

    # a trial that read the cache has the losses of the same trial recomputing the reference at every step
    cached = next(Path(r["folder"]) for r in rows
                  if not json.loads((Path(r["folder"]) / "reference_logps.json").read_text())["train"]["computed"])
    recipe = yaml.safe_load((cached / "zephyr_recipe.yaml").read_text())
    again = tmp_path / "recompute"
    cmd = [sys.executable, "-m", "zephyr.cli", "dpo", values["base"],
           *(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values["overrides"].items()
             if k != "report_to"), f"beta={recipe['beta']}",
           "precompute_ref_log_probs=false", "report_to=none", f"output_dir={again}"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    losses = [[r["loss"] for r in read_metrics(d) if "loss" in r] for d in (cached, again)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], abs=1e-5)

    # dashboards: one MLflow parent run with the trials nested under it, tagged with their parameters
    runs = {p.name: p for p in (out / "mlruns").glob("*/*") if (p / "tags").is_dir()}
    parent = (out / "mlflow_parent_run").read_text()
    children = [p for p in runs.values() if (p / "tags" / "mlflow.parentRunId").is_file()]
    assert parent in runs and len(children) == 3
    assert all((c / "tags" / "mlflow.parentRunId").read_text() == parent for c in children)
    assert sorted((c / "tags" / "param.beta").read_text() for c in children) == ["0.1", "0.2", "0.3"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["trial-0", "trial-1", "trial-2"]
    db = sqlite3.connect(out / "trackio" / "par.db")  # one trackio project named after the sweep
    assert {r for (r,) in db.execute("select distinct run_name from metrics")} == {f"par-trial-{i}" for i in range(3)}
    for i in range(3):  # wandb, offline without a key: each trial's run in the sweep's group, tagged
        (run_file,) = (out / f"trial-{i}" / "wandb").glob("offline-run-*/run-*.wandb")
        run = wandb_run_record(run_file)
        assert (run.run_group, run.project, run.display_name) == ("par", "par", f"par-trial-{i}")
        assert f"zephyr.trial={i}" in run.tags and any(t.startswith("param.beta=0.") for t in run.tags)

    # report: the objective against the parameter, the ranked table, each trial's curves
    made = report(out)
    assert made[str(out / "report" / "objective.png")] == ["eval_rewards/margins vs beta"]
    assert (out / "report" / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 | " in (out / "report" / "sweep.md").read_text()
    assert all((out / f"trial-{i}" / "report" / "curves.png").is_file() for i in range(3))


@pytest.mark.slow
def test_pruning_stops_a_lagging_trial_early(tiny_dir, tmp_path):
    out = tmp_path / "prune"
    # trial 0 learns; trial 1 barely moves, so its eval loss lags trial 0's at the same step and it is stopped
    values = sweep_config(tiny_dir, out, {"learning_rate": {"choices": [3e-3, 1e-9]}})
    values["objective"] = {"metric": "eval_loss", "direction": "minimize"}
    # 30 steps: trial 0 must finish (it sets the median), trial 1 must still be running when step 2 is judged
    values["overrides"].update(max_steps=30, eval_strategy="steps", eval_steps=2, max_train_samples=64)
    values.update(pruning={"type": "median", "n_startup_trials": 1}, poll_seconds=0.2)
    rows = run_sweep(config(values))
    by_lr = {r["params"]["learning_rate"]: r for r in rows}
    assert by_lr[3e-3]["state"] == "COMPLETE"
    pruned = by_lr[1e-9]
    assert pruned["state"] == "PRUNED" and pruned["pruned_at"] == 2
    steps = [r["step"] for r in read_metrics(Path(pruned["folder"]))]
    assert max(steps) < 30 and not (Path(pruned["folder"]) / "all_results.json").exists()  # killed, not finished
    assert "pruned at step 2" in (out / "summary.md").read_text()


def test_device_slots_give_each_trial_its_gpus_or_a_share_of_the_cores(monkeypatch):
    values = {"base": "b.yaml", "stage": "dpo", "output_dir": "o", "space": {"beta": {"choices": [1]}},
              "objective": {"metric": "m"}}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert device_slots(config({**values, "parallel": 0, "gpus_per_trial": 2})) == [
        {"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert device_slots(config({**values, "parallel": 3})) == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(3)]
    with pytest.raises(RecipeError, match="only 4 GPU"):
        device_slots(config({**values, "gpus_per_trial": 8}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: N processes, each with its share of the cores
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert device_slots(config({**values, "parallel": 2})) == [{"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}] * 2


@pytest.mark.slow
def test_a_trial_runs_under_accelerate_launch_when_configured(tiny_dir, tmp_path):
    values = sweep_config(tiny_dir, tmp_path / "acc", {"beta": {"choices": [0.1]}})
    values["accelerate_config"] = "cpu_2proc"
    values["overrides"].update(max_train_samples=64, per_device_train_batch_size=16)
    (row,) = run_sweep(config(values))
    assert row["state"] == "COMPLETE"
    log = (Path(row["folder"]) / "trial.log").read_text()
    assert "accelerate.commands.launch --config_file" in log and "cpu_2proc.yaml" in log
    # 64 rows at 16 per process: one process would need 4 steps per epoch, two processes need 2
    train_logs = [r for r in read_metrics(Path(row["folder"])) if "loss" in r]
    assert [r["epoch"] for r in train_logs] == [0.5, 1.0]


@pytest.mark.parametrize(("space", "message"), [
    ({}, "space: empty; name at least one recipe key"),
    ({"beta": {"choices": []}}, r"space.beta.choices: expected a non-empty list of values, got \[\]"),
    ({"learning_rate": {"low": 1e-3, "high": 1e-5}}, r"space.learning_rate: low \(0.001\) is above high \(1e-05\)"),
    ({"learning_rate": {"low": 0, "high": 1e-5, "log": True}}, "a log-scale range needs low > 0, got 0"),
    ({"max_steps": {"low": 1.5, "high": 4, "int": True}}, "int: true needs whole-number bounds"),
    ({"beta": {"low": "small", "high": 1}}, "low and high must be numbers, got low='small'"),
])
def test_a_search_space_that_cannot_be_drawn_from_is_one_clear_error(space, message, tmp_path):
    from zephyr.sweep import SweepConfig, check_space

    cfg = build_configs({"base": "x.yaml", "stage": "dpo", "output_dir": str(tmp_path), "strategy": "random",
                         "space": space, "objective": {"metric": "eval_loss"}}, (SweepConfig,))[0]
    with pytest.raises(RecipeError, match=message):
        check_space(cfg)
    check_space(build_configs({"base": "x.yaml", "stage": "dpo", "output_dir": str(tmp_path), "strategy": "random",
                               "space": {"learning_rate": {"low": "1e-6", "high": 1e-4, "log": True}},
                               "objective": {"metric": "eval_loss"}}, (SweepConfig,))[0])
