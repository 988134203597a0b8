"""`zephyr sweep`: a real Optuna study on SQLite with tiny dDPO trials: grid/random/TPE trial sets, a failing
trial recorded while the sweep goes on, resume after a kill, and the best recipe exported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from zephyr.recipe import build_configs
from zephyr.sweep import SweepConfig, export_best, make_study, run_sweep

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
    assert run_sweep(cfg) == rows  # rerun: everything finished, nothing runs again


def test_random_and_tpe_sample_the_space_and_a_failing_trial_is_recorded(tiny_dir, tmp_path):
    for strategy in ("random", "tpe"):
        space = {"beta": {"low": 0.05, "high": 0.5, "log": True}, "loss_type": {"choices": ["sigmoid", "nonsense"]}}
        cfg = config(sweep_config(tiny_dir, tmp_path / strategy, space, strategy=strategy, trials=3))
        rows = run_sweep(cfg)
        assert len(rows) == 3 and all(0.05 <= r["params"]["beta"] <= 0.5 for r in rows)
        for r in rows:  # an unknown loss type fails its trial; the sweep goes on
            if r["params"]["loss_type"] == "nonsense":
                assert r["state"] == "FAIL" and "exit code" in r["error"]
            else:
                assert r["state"] == "COMPLETE" and isinstance(r["value"], float)


def test_killed_sweep_resumes_and_reruns_the_interrupted_trial(tiny_dir, tmp_path):
    out = tmp_path / "killed"
    values = sweep_config(tiny_dir, out, {"beta": {"choices": [0.1, 0.2, 0.3]}})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = subprocess.Popen([sys.executable, "-m", "zephyr.cli", "sweep", str(path)], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "trial-1" / "trial.log").exists():  # trial 0 finished, trial 1 running
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running trial
    proc.wait()
    study = make_study(config(values))
    assert [t.state for t in study.trials][:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
    rows = run_sweep(config(values))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert sorted(r["params"]["beta"] for r in complete) == [0.1, 0.2, 0.3]  # each grid point done once
    interrupted = [r for r in rows if r["state"] == "FAIL"]
    assert len(interrupted) == 1 and "interrupted" in interrupted[0]["error"]
