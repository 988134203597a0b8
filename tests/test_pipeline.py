"""`zephyr run`: every stage in order, skip what is complete, --from/--only, and resume after a kill -9
(inside a stage and between stages) to the same outputs as an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from safetensors.torch import load_file

from zephyr.pipeline import MARKER, run_pipeline

pytestmark = pytest.mark.slow  # every test here launches whole processes

REPO = Path(__file__).resolve().parents[1]

# Fake credentials in the environment of every pipeline run (and a hub_token in the dSFT and dDPO overrides):
# none may appear in any file the pipeline writes or in its log.
SECRETS = {"HF_TOKEN": "hf_FAKEpipelineTOKEN4242", "WANDB_API_KEY": "fakepipelinewandbkey00000000000000000000",
           "OPENAI_API_KEY": "sk-FAKEpipelineOPENAI4242"}
HUB_TOKEN = "hf_FAKEpipelineHUBtoken7777"


# The shipped tiny pipeline, shortened: a smaller model, fewer rows, steps and prompts.
SHORTEN = {
    "sft": {"max_train_samples": 256, "num_train_epochs": 2, "per_device_train_batch_size": 32,
            "save_strategy": "steps", "save_steps": 4, "save_total_limit": 2, "eval_strategy": "no",
            "logging_steps": 1, "hub_token": HUB_TOKEN},
    "aif": {"prompts.max_prompts": 24, "generators.0.num_completions": 2, "generators.0.batch_size": 16,
            "generators.1.batch_size": 16},
    "dpo": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "eval_strategy": "no", "logging_steps": 1,
            "hub_token": HUB_TOKEN},
    "eval": {"bootstrap_samples": 200, "reward_accuracy.max_pairs": 4},
}


def short_pipeline(tmp_path: Path) -> Path:
    spec = yaml.safe_load((REPO / "recipes" / "tiny" / "pipeline.yaml").read_text())
    spec["tiny_model"]["hidden_size"] = 32
    for name, stage in spec["stages"].items():
        stage["recipe"] = str(REPO / stage["recipe"])
        stage["overrides"].update(SHORTEN[name])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run_cli(pipeline: Path, root: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, **SECRETS, "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # same maths in every process
    return subprocess.Popen([sys.executable, "-m", "zephyr.cli", "run", str(pipeline), "--root", str(root), *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def outputs(root: Path) -> dict:
    """What a finished run produced, in comparable form."""
    results = json.loads((root / "eval" / "results.json").read_text())
    return {
        "sft": load_file(root / "sft" / "model.safetensors"),
        "dpo": load_file(root / "dpo" / "model.safetensors"),
        "pairs": datasets.load_dataset(str(root / "aif"), split="train_prefs").to_list(),
        "scores": {name: m["score"]["mean"] for name, m in results["models"].items()},
    }


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def assert_same(a: dict, b: dict) -> None:
    for model in ("sft", "dpo"):
        assert_same_weights(a[model], b[model])
    assert a["pairs"] == b["pairs"]
    assert a["scores"] == b["scores"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the shortened pipeline, in a subprocess."""
    tmp = tmp_path_factory.mktemp("pipeline")
    pipeline = short_pipeline(tmp)
    root = tmp / "uninterrupted"
    log = finish(run_cli(pipeline, root))
    return pipeline, root, log


def test_no_secret_reaches_any_file_or_the_log(reference):
    _, root, log = reference
    secrets = [*SECRETS.values(), HUB_TOKEN]
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:  # models, checkpoints (training_args.bin), recipes, stores, results, logs
        data = path.read_bytes()
        assert not any(s.encode() in data for s in secrets), path
    assert any(p.name == "training_args.bin" for p in files) and any(p.name == "zephyr_recipe.yaml" for p in files)
    assert not any(s in log for s in secrets)


def test_every_stage_runs_in_order_and_writes_its_outputs(reference):
    _, root, log = reference
    order = [line.split("stage ")[1].split(":")[0] for line in log.splitlines() if ": starting" in line]
    assert order == ["tiny_model", "sft", "aif", "dpo", "eval"]
    for folder in ("", "sft", "aif", "dpo", "eval"):
        assert json.loads((root / folder / MARKER).read_text())["hash"]
    results = json.loads((root / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"sft", "dpo"} and "reward_accuracy" in results
    assert (root / "eval" / "scores.png").is_file() and (root / "eval" / "results.md").is_file()
    for log in (root / "tiny_model.log", root / "sft" / "stage.log", root / "eval" / "stage.log"):  # no optional
        text = log.read_text()  # library the run does not use is loaded (zephyr/optional_imports.py)
        assert "not loading bitsandbytes, deepspeed, wandb" in text and "real_accelerator" not in text, log


def test_rerun_skips_complete_stages_and_from_only_rerun_parts(reference, tmp_path):
    pipeline, ref_root, _ = reference
    work = tmp_path / "run"
    shutil.copytree(ref_root, work)  # the finished run, moved: stage hashes leave the root out
    assert run_pipeline(pipeline, root=str(work))["seconds"] == {}  # everything complete: nothing runs
    # --from and a stale stage are decided by the same loop whether or not it runs (the dry run's plan); the
    # forced rerun of test_forced_rerun_... runs them for real
    assert run_pipeline(pipeline, root=str(work), start="dpo", dry_run=True)["plan"] == {
        "tiny_model": "done", "sft": "done", "aif": "done", "dpo": "forced", "eval": "forced"}
    assert set(run_pipeline(pipeline, root=str(work), only="aif")["seconds"]) == {"aif"}
    # aif ran again, so what follows it is stale: the next plain run redoes dpo and eval, not sft
    assert run_pipeline(pipeline, root=str(work), dry_run=True)["plan"] == {
        "tiny_model": "done", "sft": "done", "aif": "done", "dpo": "stale", "eval": "stale"}


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.time()
    while not predicate():
        assert proc.poll() is None, "the run finished before it could be interrupted"
        assert time.time() - start < timeout
        time.sleep(0.05)


def test_kill_inside_a_stage_then_between_stages_then_rerun_gives_the_same_outputs(reference, tmp_path):
    pipeline, ref_root, _ = reference
    root = tmp_path / "killed"
    proc = run_cli(pipeline, root)
    wait_for(lambda: any((root / "sft").glob("checkpoint-*/trainer_state.json")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "sft" / MARKER).exists()  # killed inside dSFT

    proc = run_cli(pipeline, root)  # resumes dSFT from its checkpoint...
    wait_for(lambda: (root / "aif" / MARKER).exists(), proc)
    proc.send_signal(signal.SIGKILL)  # ...and is killed again, between AIF and dDPO
    out, _ = proc.communicate()
    assert "resuming from" in out and "stage tiny_model: already complete" in out

    log = finish(run_cli(pipeline, root))
    assert "stage sft: already complete" in log and "stage aif: already complete" in log
    assert_same(outputs(root), outputs(ref_root))


def test_forced_rerun_killed_midway_resumes_its_own_checkpoints_not_the_old_runs(reference, tmp_path):
    pipeline, ref_root, _ = reference
    root = tmp_path / "forced"
    shutil.copytree(ref_root, root)  # a finished run, with its last dSFT checkpoints
    assert {p.name for p in (root / "sft").glob("checkpoint-*")} == {"checkpoint-12", "checkpoint-16"}
    proc = run_cli(pipeline, root, "--from", "sft")  # retrain from scratch...
    wait_for(lambda: (root / "sft" / "checkpoint-4" / "trainer_state.json").exists(), proc)
    proc.send_signal(signal.SIGKILL)  # ...and die early
    proc.wait()
    assert not (root / "sft" / MARKER).exists()  # the folder no longer holds a finished stage
    assert not (root / "sft" / "checkpoint-16").exists()  # the old run's checkpoints went when training restarted
    # the newest checkpoint the new run saved before the kill (checkpoint-4, or a later one under load)
    newest = max((p.parent for p in (root / "sft").glob("checkpoint-*/trainer_state.json")),
                 key=lambda c: int(c.name.split("-")[1]))
    proc = run_cli(pipeline, root)  # resumes the new run's dSFT; killed once dSFT is done (the kill test, above,
    wait_for(lambda: (root / "sft" / MARKER).exists(), proc)  # finishes a resumed pipeline to the same outputs)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert f"resuming from {newest}" in out
    assert_same_weights(load_file(root / "sft" / "model.safetensors"), load_file(ref_root / "sft" / "model.safetensors"))
    plan = run_pipeline(pipeline, root=str(root), dry_run=True)["plan"]  # what follows dSFT is redone: older than it
    assert plan["sft"] == "done" and plan["aif"] in ("stale", "to run") and plan["dpo"] == plan["eval"] == "stale"


def test_a_reward_model_judges_aif_and_a_second_round_trains_the_newest_policy(reference, tmp_path):
    """The finished run, extended: a reward model (zephyr rm) trained on the shipped pairs before AIF becomes AIF's
    judge, and `rounds: 2` adds a round whose AIF samples round 1's policy and whose dDPO trains it; the eval
    then compares both rounds. dSFT is reused; what its inputs changed is redone."""
    pipeline, ref_root, _ = reference
    work = tmp_path / "run"
    shutil.copytree(ref_root, work)
    spec = yaml.safe_load(pipeline.read_text())
    rm = {"recipe": str(REPO / "recipes" / "tiny" / "rm.yaml"), "overrides": {
        "model_name_or_path": "${root}/sft", "dataset_name": "${root}/data/prefs", "output_dir": "${root}/rm",
        "max_train_samples": 128, "num_train_epochs": 1, "eval_strategy": "no", "save_strategy": "no"}}
    stages = dict(spec["stages"])
    stages["aif"]["overrides"].update({"judge.type": "reward_model", "judge.model": "${root}/rm",
                                       "judge.callable": None})
    spec["stages"] = {"sft": stages["sft"], "rm": rm, **{k: v for k, v in stages.items() if k != "sft"}}
    spec["rounds"] = 2
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    ran = run_pipeline(path, root=str(work))["seconds"]
    assert list(ran) == ["rm", "aif", "dpo", "aif_r2", "dpo_r2", "eval"]  # tiny_model and sft were complete
    for aif in (work / "aif", work / "round2" / "aif"):
        raw = [json.loads(x) for x in (aif / "raw.jsonl").read_text().splitlines()]
        rewards = [c["judgment"]["reward"] for r in raw for c in r["completions"]]
        assert len(set(rewards)) > 1 and json.loads((aif / "summary.json").read_text())["pairs"] > 0
    recipe = yaml.safe_load((work / "round2" / "dpo" / "zephyr_recipe.yaml").read_text())
    assert (recipe["model_name_or_path"], recipe["dataset_name"]) == (str(work / "dpo"), str(work / "round2" / "aif"))
    one, two = load_file(work / "dpo" / "model.safetensors"), load_file(work / "round2" / "dpo" / "model.safetensors")
    assert any(not torch.equal(one[k], two[k]) for k in one)  # round 2 trained on
    results = json.loads((work / "eval" / "results.json").read_text())
    assert list(results["models"]) == ["sft", "dpo", "dpo_r2"]
    assert results["models"]["dpo_r2"]["score_minus_previous_round"]["previous"] == "dpo"
    assert run_pipeline(path, root=str(work))["seconds"] == {}  # all complete
