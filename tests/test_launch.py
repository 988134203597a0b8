"""`zephyr run` as a launcher: each stage its own process with its own log, launch settings for training stages,
checks of every stage before the first starts, `--dry-run`, signals and kill -9 (zephyr/launch.py, plan.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from zephyr.launch import LaunchSettings, stage_command
from zephyr.pipeline import MARKER, run_pipeline
from zephyr.recipe import RecipeError

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PIPELINES = sorted(REPO.glob("recipes/**/pipeline*.yaml"))


def forbid_loading(monkeypatch) -> None:
    """Any model, tokenizer or dataset load is a test failure."""
    import datasets
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"loaded something during a dry run: {args[:1]}")

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(datasets, "load_from_disk", refuse)


@pytest.mark.parametrize("pipeline", SHIPPED_PIPELINES, ids=lambda p: str(p.relative_to(REPO)))
def test_dry_run_of_every_shipped_pipeline_loads_nothing(pipeline, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forbid_loading(monkeypatch)
    result = run_pipeline(pipeline, root=str(tmp_path / "root"), dry_run=True)
    assert set(result["plan"].values()) == {"to run"}
    text = capsys.readouterr().out
    for stage in result["plan"]:
        assert f"[{stage}] to run" in text
    assert not (tmp_path / "root").exists()  # nothing was built or written


def test_shipped_pipelines_include_the_tiny_one():
    assert REPO / "recipes" / "tiny" / "pipeline.yaml" in SHIPPED_PIPELINES


def tiny_pipeline(tmp_path: Path, tiny: Path, stages: dict, launch: dict | None = None) -> Path:
    """A pipeline over the test run's tiny model (no tiny_model stage): dSFT and/or dDPO, short runs."""
    common = {"model_name_or_path": str(tiny / "model"), "dtype": "float32", "max_train_samples": 32,
              "max_length": 64, "per_device_train_batch_size": 8, "num_train_epochs": 1, "logging_steps": 1,
              "eval_strategy": "no", "report_to": "none", "seed": 0, "learning_rate": 1e-3}
    spec: dict = {"root": str(tmp_path / "root"), "stages": {}}
    if launch:
        spec["launch"] = launch
    if "sft" in stages:
        spec["stages"]["sft"] = {"recipe": str(REPO / "recipes" / "tiny" / "sft.yaml"), "overrides": {
            **common, "dataset_mixture": None, "dataset_name": str(tiny / "data" / "sft"),
            "dataset_train_split": "train_sft", "dataset_test_split": None, "output_dir": "${root}/sft",
            "save_strategy": "steps", "save_steps": 1, "save_total_limit": None, **stages["sft"]}}
    if "aif" in stages:
        spec["stages"]["aif"] = {"recipe": str(REPO / "recipes" / "tiny" / "aif.yaml"), "overrides": {
            "prompts.id": str(tiny / "data" / "prompts"), "prompts.max_prompts": 16,
            "generators.0.model": "${root}/sft" if "sft" in stages else str(tiny / "model"),
            "generators.0.num_completions": 2,
            "generators.1.model": str(tiny / "model"), "output_dir": "${root}/aif", **stages["aif"]}}
        if "aif_workers" in stages:
            spec["stages"]["aif"]["launch"] = {"num_processes": stages["aif_workers"]}
    if "dpo" in stages:
        spec["stages"]["dpo"] = {"recipe": str(REPO / "recipes" / "tiny" / "dpo.yaml"), "overrides": {
            **common, "model_name_or_path": "${root}/sft" if "sft" in stages else str(tiny / "model"),
            "dataset_name": "${root}/aif" if "aif" in stages else str(tiny / "data" / "prefs"),
            "dataset_test_split": None, "output_dir": "${root}/dpo", **stages["dpo"]}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def zephyr_run(pipeline: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "zephyr.cli", "run", str(pipeline), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, code: int = 0) -> str:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == code, out[-4000:]
    return out


def test_a_wiring_error_is_caught_before_any_stage_runs(tiny_dir, tmp_path):
    pipeline = tiny_pipeline(tmp_path, tiny_dir, {"sft": {}, "dpo": {"dataset_name": "${root}/aif"}})
    with pytest.raises(RecipeError, match=r"stage dpo .*dataset_name: .*root/aif: no such file or folder, and no "
                                          r"earlier stage of this run writes it"):
        run_pipeline(pipeline, dry_run=False)
    assert not (tmp_path / "root").exists()  # dSFT did not start

    spec = yaml.safe_load(pipeline.read_text())
    spec["stages"]["dpo"]["overrides"]["dataset_name"] = str(tiny_dir / "data" / "prefs")
    spec["stages"]["dpo"]["overrides"]["learning_rat"] = 1e-3  # a typo
    pipeline.write_text(yaml.safe_dump(spec))
    with pytest.raises(RecipeError, match=r"stage dpo .*learning_rat.*learning_rate"):
        run_pipeline(pipeline)

    spec["stages"]["dpo"]["recipe"] = str(tmp_path / "missing.yaml")
    pipeline.write_text(yaml.safe_dump(spec))
    with pytest.raises(RecipeError, match=r"pipeline.yaml: stage 'dpo': recipe .*missing.yaml: no such file"):
        run_pipeline(pipeline)


def test_launch_settings_build_the_accelerate_command():
    assert stage_command("sft", ["r.yaml"], None)[1:] == ["-m", "zephyr.cli", "sft", "r.yaml"]
    cmd = stage_command("dpo", ["r.yaml", "seed=1"], LaunchSettings(accelerate_config="zero3", num_processes=8))
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1].endswith("accelerate_configs/zero3.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "8" and "--main_process_port" in cmd
    assert cmd[-5:] == ["-m", "zephyr.cli", "dpo", "r.yaml", "seed=1"]
    # eval and aif are one process each, whatever the launch settings
    assert "accelerate.commands.launch" not in stage_command("eval", ["e.yaml"], LaunchSettings("zero3"))
    with pytest.raises(RecipeError, match="launch: unknown keys \\['num_gpus'\\]"):
        LaunchSettings.parse({"num_gpus": 8}, "p.yaml")


@pytest.mark.slow
def test_a_failing_stage_names_itself_and_its_log(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    bad.write_text(good + "\n" + good + "\n{not json\n")
    pipeline = tiny_pipeline(tmp_path, tiny_dir, {"sft": {"dataset_name": str(bad), "dataset_train_split": "train"}})
    out = finish(zephyr_run(pipeline), code=2)
    log = tmp_path / "root" / "sft" / "stage.log"
    assert f"zephyr run: stage sft failed with exit code 2; full log: {log}" in out
    assert f"{bad}: line 3, column 2: not valid JSON" in log.read_text()  # the stage's own error, with file and line, is in its log
    assert not (tmp_path / "root" / "sft" / MARKER).exists()


def rank_processes(marker: str) -> list[int]:
    """Live processes whose command line mentions `marker` (a test's unique folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_two_process_launch_matches_one_process_and_survives_kill_9(tiny_dir, tmp_path):
    """--launch cpu_2proc: dSFT runs as two ranks (global batch 8 = 2 x 4); kill -9 of `zephyr run` mid-dSFT leaves
    no rank behind, and the rerun resumes and finishes. That two ranks x 4 train as one process x 8 is
    test_distributed.py's (`--accelerate-config cpu_2proc`, the command `--launch` builds, and every other launcher
    and training stage); that a resumed two-rank run ends where an uninterrupted one does, test_reliability.py's."""
    two = tiny_pipeline(tmp_path / "two", tiny_dir, {"sft": {"per_device_train_batch_size": 4}})
    proc = zephyr_run(two, "--launch", "cpu_2proc")
    sft = tmp_path / "two" / "root" / "sft"
    start = time.time()
    while not (sft / "checkpoint-2" / "trainer_state.json").exists():  # every checkpoint is kept (no limit)
        assert proc.poll() is None and time.time() - start < 300, "dSFT never reached its second checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while rank_processes(str(tmp_path / "two")) and time.time() < deadline:
        time.sleep(0.2)
    assert rank_processes(str(tmp_path / "two")) == [], "a rank outlived zephyr run"
    out = finish(zephyr_run(two, "--launch", "cpu_2proc"))
    assert "resuming from" in (sft / "stage.log").read_text()
    log = (sft / "stage.log").read_text()
    assert "accelerate.commands.launch --config_file" in log and "cpu_2proc.yaml" in log
    assert "zephyr: sft rank 0 of 2" in log and "zephyr: sft rank 1 of 2" in log
    state = json.loads((sft / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 4 and state["global_step"] == 4  # per device: 2 x 4 = 8, 32 rows
    assert (sft / "model.safetensors").is_file() and "stage sft: done" in out


@pytest.mark.slow
def test_sigterm_to_zephyr_run_stops_the_stage_cleanly(tiny_dir, tmp_path):
    # every checkpoint kept (the tiny recipe's save_total_limit: 1 would let checkpoint-1 live one step)
    pipeline = tiny_pipeline(tmp_path, tiny_dir, {"dpo": {"save_strategy": "steps", "save_steps": 1,
                                                          "save_total_limit": None, "max_train_samples": 64}})
    proc = zephyr_run(pipeline)
    dpo = tmp_path / "root" / "dpo"
    start = time.time()
    while not any(dpo.glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None and time.time() - start < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = finish(proc, code=143)
    assert f"zephyr run: stage dpo stopped with exit code 143; full log: {dpo / 'stage.log'}; rerun the same " \
           "command to resume" in out
    assert not (dpo / MARKER).exists()
    out = finish(zephyr_run(pipeline))
    assert "resuming from" in out and (dpo / MARKER).is_file()


@pytest.mark.slow
def test_slurm_script_runs_the_whole_pipeline(tiny_dir, tmp_path):
    """`sbatch scripts/launch_slurm.sh run PIPELINE`, with stand-ins for srun and scontrol (one node, two CPU
    processes per training stage): a training stage through srun + accelerate, AIF as shards then merged."""
    from zephyr.launch import free_port

    bin_dir, calls = tmp_path / "bin", tmp_path / "srun_calls.txt"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho 127.0.0.1\n")
    (bin_dir / "srun").write_text(f'#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
                                  f'echo "$*" >> {calls}\nSLURM_PROCID=0 exec "$@"\n')
    for f in ("scontrol", "srun"):
        (bin_dir / f).chmod(0o755)
    pipeline = tiny_pipeline(tmp_path, tiny_dir, {"sft": {"per_device_train_batch_size": 4}, "aif": {}},
                             launch={"accelerate_config": "cpu_2proc"})
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "node1", "GPUS_PER_NODE": "2", "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(free_port())}
    proc = subprocess.run(["bash", "scripts/launch_slurm.sh", "run", str(pipeline)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "pipeline " + str(pipeline) + " on 1 node(s) x 2 processes" in proc.stdout
    srun = calls.read_text().splitlines()
    assert len(srun) == 2  # dSFT (dDPO and the other training stages alike), the AIF shards; eval runs without srun
    assert "--machine_rank" in srun[0] and "zephyr.cli sft" in srun[0] and "--num_processes 2" in srun[0]
    assert "--shard" in srun[1] and "zephyr.cli aif" in srun[1]
    assert "--rebinarize" in (tmp_path / "root" / "aif" / "stage.log").read_text()
    root = tmp_path / "root"
    assert json.loads((root / "sft" / "trainer_state.json").read_text())["train_batch_size"] == 4
    assert (root / "sft" / MARKER).is_file() and (root / "aif" / MARKER).is_file()
    assert json.loads((root / "aif" / "summary.json").read_text())["pairs"] > 0


@pytest.mark.parametrize("recipe", sorted(REPO.glob("recipes/zephyr-7b-beta/*/config_*.yaml")),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_stage_dry_run_of_the_zephyr_7b_recipes_loads_nothing(recipe, monkeypatch, capsys, tmp_path):
    from zephyr.plan import dry_run_stage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forbid_loading(monkeypatch)
    stage = recipe.parent.name
    overrides = []
    questions = yaml.safe_load(recipe.read_text()).get("questions", "")
    if stage == "eval" and questions.startswith("data/"):  # a benchmark file the user downloads: a stand-in
        stand_in = tmp_path / Path(questions).name
        stand_in.write_text(json.dumps([{"instruction": "Say hi.", "dataset": "misc"}]) if stand_in.suffix == ".json"
                            else json.dumps({"uid": "a1", "category": "hard", "turns": [{"content": "Hi?"}]}) + "\n")
        overrides.append(f"questions={stand_in}")
    lines = dry_run_stage(stage, [str(recipe), *overrides])
    assert lines[0] == f"zephyr {stage} (dry run): recipe resolved and checked; nothing was loaded or run"
    if stage in ("sft", "dpo"):
        assert any(line.startswith("  global batch:") for line in lines)
    if stage == "dpo":
        assert any("reference:" in line for line in lines)


def test_dpo_dry_run_names_the_forward_layout_the_model_gets(tiny_dir, tmp_path, monkeypatch, capsys):
    """From the model's config alone (zephyr/levers.py): the shared prompt on the tiny Mistral, padded batches with
    the reason on a hybrid; a hub id that is not on this machine is decided at load time."""
    import transformers

    from zephyr.plan import dry_run_stage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forbid_loading(monkeypatch)
    hybrid = tmp_path / "lfm2"
    transformers.AutoConfig.for_model("lfm2", layer_types=["conv", "full_attention"],
                                      num_hidden_layers=2).save_pretrained(hybrid)
    data = [f"dataset_name={tiny_dir / 'data' / 'prefs'}", f"output_dir={tmp_path / 'out'}"]
    layouts = {}
    for name, model in (("tiny", tiny_dir / "model"), ("hybrid", hybrid), ("hub", "someone/not-here")):
        lines = dry_run_stage("dpo", [str(REPO / "recipes/tiny/dpo.yaml"), f"model_name_or_path={model}", *data])
        layouts[name] = next(line.strip() for line in lines if "forward layout" in line)
    assert layouts == {
        "tiny": "forward layout: shared_prompt",
        "hybrid": "forward layout: padded; share_prompt: off for lfm2: its layer type 'conv' mixes tokens along a "
                  "packed row whatever the attention mask; padded batches",
        "hub": "forward layout: decided when the model's config is loaded (not on this machine yet)"}


def test_stage_dry_run_on_the_command_line_reports_a_typo(tmp_path, monkeypatch, capsys):
    from zephyr.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sft", str(REPO / "recipes/tiny/sft.yaml"), "--dry-run", "--learning_rat", "1"]) == 2
    assert "zephyr: error: command line: unknown key 'learning_rat'; did you mean 'learning_rate'?" in \
        capsys.readouterr().err
    assert main(["eval", str(REPO / "recipes/tiny/eval.yaml"), "--dry-run"]) == 2
    assert "questions: outputs/tiny/data/eval/questions.jsonl: no such file or folder" in capsys.readouterr().err


@pytest.mark.slow
def test_aif_runs_one_worker_per_gpu_then_merges(tiny_dir, tmp_path):
    """AIF with local models and several GPUs: workers side by side, one prompt shard each, then one merge (here
    two workers asked for explicitly, on CPU)."""
    pipeline = tiny_pipeline(tmp_path, tiny_dir, {"aif": {}, "aif_workers": 2})
    finish(zephyr_run(pipeline))
    aif = tmp_path / "root" / "aif"
    log = (aif / "stage.log").read_text()
    assert "--shard 0/2" in log and "--shard 1/2" in log and "--rebinarize" in log
    assert "[worker 0] " in log and "[worker 1] " in log
    assert (aif / "completions.shard-0-of-2.jsonl").is_file() and (aif / "completions.shard-1-of-2.jsonl").is_file()
    summary = json.loads((aif / "summary.json").read_text())
    assert summary["prompts"] == 16 and summary["pairs"] > 0
    with pytest.raises(RecipeError, match="aif and eval take only num_processes"):
        spec = yaml.safe_load(pipeline.read_text())
        spec["stages"]["aif"]["launch"] = {"accelerate_config": "zero3"}
        pipeline.write_text(yaml.safe_dump(spec))
        run_pipeline(pipeline, dry_run=True)


@pytest.mark.slow
def test_eval_runs_one_worker_per_gpu_then_merges_and_reports(tiny_dir, tmp_path):
    """Eval with local models and several GPUs: workers answer and grade their shares side by side, then one run
    reads every shard's records and reports on all questions (two workers asked for explicitly, on CPU)."""
    spec = {"root": str(tmp_path / "root"), "stages": {"eval": {
        "recipe": str(REPO / "recipes" / "tiny" / "eval.yaml"), "launch": {"num_processes": 2}, "overrides": {
            "questions": str(tiny_dir / "data" / "eval" / "questions.jsonl"),
            "models.0.model": str(tiny_dir / "model"), "models.1.model": str(tiny_dir / "model"),
            "models.1.temperature": 0.7, "reward_accuracy": None, "bootstrap_samples": 50,
            "output_dir": "${root}/eval"}}}}
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump(spec))
    finish(zephyr_run(pipeline))
    out = tmp_path / "root" / "eval"
    log = (out / "stage.log").read_text()
    assert "--shard 0/2" in log and "--shard 1/2" in log and "[worker 1] " in log
    assert len(list(out.glob("eval_records.*.shard-*-of-2.jsonl"))) == 2
    results = json.loads((out / "results.json").read_text())
    questions = len((tiny_dir / "data" / "eval" / "questions.jsonl").read_text().splitlines())
    assert results["questions"] == questions and results["missing"]["results"] == 0
    assert {m: e["score"]["n"] for m, e in results["models"].items()} == {"sft": questions, "dpo": questions}


def test_vllm_tensor_parallel_workers_split_the_gpus(monkeypatch):
    """8 GPUs, models split over 2 each (vLLM tensor parallel): 4 data-parallel workers with 2 GPUs each, and
    the vLLM backend is built with that tensor_parallel_size."""
    import types

    from zephyr.inference.backends import VLLMBackend
    from zephyr.inference.settings import GeneratorConfig
    from zephyr.launch import Parallel, shard_workers
    from zephyr.plan import gpus_per_worker

    gens = [GeneratorConfig(name="a", backend="vllm", model="m", tensor_parallel_size=2),
            GeneratorConfig(name="b", backend="transformers", model="n")]
    cfg = types.SimpleNamespace(generators=gens, judge=GeneratorConfig(backend="openai", model="j"))
    assert gpus_per_worker(cfg) == 2
    group, merge = shard_workers("aif", ["r.yaml"], 4, [str(i) for i in range(8)], 2)
    assert isinstance(group, Parallel) and merge[-1] == "--rebinarize"
    assert [e["CUDA_VISIBLE_DEVICES"] for e in group.envs] == ["0,1", "2,3", "4,5", "6,7"]
    assert [c[-1] for c in group.commands] == ["0/4", "1/4", "2/4", "3/4"]
    built = {}
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=lambda **kw: built.update(kw)))
    VLLMBackend(gens[0])
    assert built["tensor_parallel_size"] == 2 and built["model"] == "m"


def test_dry_run_says_when_there_is_no_eval_set(tmp_path):
    from zephyr.configs import DataArguments
    from zephyr.plan import data_lines

    rows = tmp_path / "rows.jsonl"
    rows.write_text("{}\n")
    assert data_lines(DataArguments(dataset_name=str(rows))) == [
        f"data: {rows} [train: train, no eval set (a single file has one split)]"]
    assert data_lines(DataArguments(dataset_name=str(tmp_path), dataset_test_split=None)) == [
        f"data: {tmp_path} [train: train, no eval set (dataset_test_split: null)]"]
    assert data_lines(DataArguments(dataset_name="HuggingFaceH4/ultrafeedback_binarized",
                                    dataset_train_split="train_prefs", dataset_test_split="test_prefs")) == [
        "data: HuggingFaceH4/ultrafeedback_binarized [train: train_prefs, eval: test_prefs]"]


def test_a_finished_run_moved_to_another_root_is_still_finished(tmp_path, monkeypatch, capsys):
    """Stage hashes leave the root out (`${root}`): a copied or moved run is not redone; another seed is another
    recipe."""
    import shutil

    from zephyr.pipeline import load_pipeline, mark_done, plan_steps

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forbid_loading(monkeypatch)
    pipeline = REPO / "recipes" / "tiny" / "pipeline.yaml"
    first, moved = tmp_path / "first", tmp_path / "elsewhere" / "moved"
    steps = plan_steps(load_pipeline(pipeline, root=str(first)), set(), None)
    for step in steps:  # as if each stage had finished, in order
        mark_done(step.output, step.name, step.digest, 1.0)
    plan = lambda root, **kw: run_pipeline(pipeline, root=str(root), dry_run=True, **kw)["plan"]  # noqa: E731
    assert set(plan(first).values()) == {"done"}
    shutil.copytree(first, moved)
    assert set(plan(moved).values()) == {"done"}
    reseeded = plan(moved, seed=7)
    assert reseeded["tiny_model"] == "to run" and "done" not in reseeded.values()  # it takes ${seed}
    capsys.readouterr()
