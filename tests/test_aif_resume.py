"""AIF crash safety and resumption with the local transformers backend on the tiny model: kill -9 mid-run,
torn writes, re-judging without regenerating, --rebinarize, shards, reproducible binarization."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from zephyr.aif.keys import key_parts
from zephyr.embedded.tasks import judge as task_judge
from zephyr.stages import aif

N_PROMPTS = 120
PER_PROMPT = 4  # 2 generators x 2 completions
SPLITS = ("train_prefs", "test_prefs")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs ~10x faster on one thread (two fight over 2 cores); the killed subprocess runs with
    OMP_NUM_THREADS=1 as well, so every run here computes with the same kernels."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe(folder: Path, tiny: Path, out: Path, n: int = N_PROMPTS, judge: dict | None = None,
           binarization: dict | None = None, model: Path | None = None) -> Path:
    cfg = {
        "prompts": {"id": str(tiny / "data" / "prefs"), "split": "train_prefs", "column": "prompt",
                    "max_prompts": n},
        "generators": [
            {"name": f"sampler-{seed}", "backend": "transformers", "model": str(model or tiny / "model"), "dtype": "float32",
             "num_completions": 2, "temperature": 1.0, "max_new_tokens": 16, "batch_size": 8, "seed": seed}
            for seed in (1, 2)
        ],
        "judge": judge or {"type": "callable", "callable": "zephyr.embedded.tasks:judge"},
        "binarization": binarization or {"score": "reward", "rejected": "random", "ties": "keep", "seed": 42,
                                         "test_size": 0.1},
        "output_dir": str(out),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def responses(out: Path, pattern: str = "completions*.jsonl") -> dict[str, str]:
    """key -> response over the stores; fails on a key stored twice."""
    records = [r for p in sorted(out.glob(pattern)) for r in lines(p)]
    counts = Counter(r["key"] for r in records)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1][:3]
    return {r["key"]: r["response"] for r in records}


def rows(out: Path, split: str = "train_prefs") -> list[dict]:
    path = out / "data" / f"{split}-00000-of-00001.parquet"
    if not path.exists():
        return []
    return datasets.load_dataset("parquet", data_files=str(path), split="train").to_list()


def all_rows(out: Path) -> dict[str, list[dict]]:
    return {split: rows(out, split) for split in SPLITS}


def parquet_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def baseline(tiny_dir, tmp_path_factory):
    """One uninterrupted run of the full recipe: (recipe, output_dir, summary)."""
    folder = tmp_path_factory.mktemp("aif_baseline")
    path = recipe(folder, tiny_dir, folder / "baseline")
    summary = aif.main([str(path)])
    assert (summary.completions, summary.completions_new, summary.judged_new) == (480, 480, 120)
    assert not summary.failures
    return path, folder / "baseline", summary


def copy_run(baseline, tiny: Path, tmp_path: Path, name: str, **kw) -> tuple[Path, Path]:
    """The baseline's stores in a new output dir, with a recipe pointing there (optionally changed)."""
    _, out, _ = baseline
    new = tmp_path / name
    shutil.copytree(out, new)
    return recipe(tmp_path, tiny, new, **kw), new


# ------------------------------------------------------------------------------------------------ kill -9
@pytest.mark.slow
def test_kill_9_mid_generation_then_resume_equals_an_uninterrupted_run(baseline, tiny_dir, tmp_path, caplog):
    _, base_out, base_summary = baseline
    out = tmp_path / "killed"
    path = recipe(tmp_path, tiny_dir, out)
    store = out / "completions.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(tmp_path / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "zephyr.cli", "aif", str(path)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline:
                # Kill in the second generator's part, once a few of its batches are on disk.
                if complete_lines(store) >= 280:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.005)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log_text = (tmp_path / "run.log").read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, log_text[-3000:]
    done = complete_lines(store)
    assert 280 <= done < 480, done  # killed mid-run: some, not all, answers on disk
    assert not (out / "judgments.jsonl").exists() and not (out / "data").exists()

    summary = aif.main([str(path)])
    assert summary.completions_new == 480 - done  # exactly the missing ones, nothing twice
    assert (summary.completions, summary.judged_new, summary.pairs) == (480, 120, base_summary.pairs)
    assert responses(out) == responses(base_out)  # the same answers as if never killed
    assert all_rows(out) == all_rows(base_out)
    assert all_rows(out)["test_prefs"] and all_rows(out)["train_prefs"]
    assert (out / "raw.jsonl").read_text() == (base_out / "raw.jsonl").read_text()

    # A torn write: the last record half on disk. The rerun cuts it off (with a warning) and redoes it alike.
    data = store.read_bytes()
    last = data[data.rstrip(b"\n").rfind(b"\n") + 1:]
    store.write_bytes(data[: len(data) - len(last)] + last[: len(last) // 2])
    caplog.clear()
    summary = aif.main([str(path)])
    assert "cutting off an incomplete last record" in caplog.text
    assert (summary.completions_new, summary.judged_new) == (1, 0)
    assert store.read_bytes() == data  # the redone answer is the one that was lost
    assert responses(out) == responses(base_out)
    assert all_rows(out) == all_rows(base_out)


# ------------------------------------------------------------------------------------------------ re-judging
def test_changed_judge_rejudges_without_regenerating(baseline, tiny_dir, tmp_path):
    _, base_out, _ = baseline
    judge = {"type": "callable", "callable": "zephyr.embedded.tasks:judge", "seed": 5}
    path, out = copy_run(baseline, tiny_dir, tmp_path, "seed5", judge=judge)
    n_completions, n_judgments = complete_lines(out / "completions.jsonl"), complete_lines(out / "judgments.jsonl")
    assert (n_completions, n_judgments) == (480, 120)

    summary = aif.main([str(path)])
    assert (summary.completions_new, summary.judged_new, summary.judged_prompts) == (0, 120, 120)
    assert complete_lines(out / "completions.jsonl") == 480
    assert complete_lines(out / "judgments.jsonl") == 240
    assert all_rows(out) == all_rows(base_out)  # this judge's seed changes nothing it scores

    # Another judge entirely: its own judgments, its own pairs (the shortest answer is chosen).
    path = recipe(tmp_path, tiny_dir, out, judge={"type": "callable", "callable": "aif_fakes:shortest_judge"})
    summary = aif.main([str(path)])
    assert (summary.completions_new, summary.judged_new) == (0, 120)
    assert complete_lines(out / "completions.jsonl") == 480 and complete_lines(out / "judgments.jsonl") == 360
    raw = {r["prompt_id"]: r for r in lines(out / "raw.jsonl")}
    for row in rows(out):
        answers = [c["response"] for c in raw[row["prompt_id"]]["completions"]]
        assert row["score_chosen"] == -min(len(a) for a in answers) == -len(row["chosen"][1]["content"])

    # Back to the first judge: its judgments are all stored, so nothing is redone and the data is the first.
    summary = aif.main([str(recipe(tmp_path, tiny_dir, out))])
    assert (summary.completions_new, summary.judged_new) == (0, 0)
    assert complete_lines(out / "judgments.jsonl") == 360
    assert all_rows(out) == all_rows(base_out)


def test_a_generator_retrained_in_place_regenerates_and_a_moved_one_does_not(baseline, tiny_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "gen"
    shutil.copytree(tiny_dir / "model", model)
    (model / "zephyr_stage.json").write_text("{}")  # run files beside the weights do not count
    path, out = copy_run(baseline, tiny_dir, tmp_path, "moved", n=20, model=model)
    summary = aif.main([str(path)])  # same weights, another folder: every answer is reused
    assert (summary.completions_new, summary.judged_new) == (0, 0)

    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    save_file({**weights, name: weights[name] + 0.01}, model / "model.safetensors", metadata={"format": "pt"})
    summary = aif.main([str(path)])  # same path, new weights (a dSFT rerun): nothing stale is served
    assert (summary.completions_new, summary.judged_new) == (20 * PER_PROMPT, 20)


# ------------------------------------------------------------------------------------------------ rebinarize
def test_rebinarize_rewrites_the_dataset_only_and_reproducibly(baseline, tiny_dir, tmp_path):
    _, base_out, _ = baseline
    binarization = {"score": "reward", "rejected": "lowest", "ties": "keep", "seed": 42, "test_size": 0.1}
    path, out = copy_run(baseline, tiny_dir, tmp_path, "lowest", binarization=binarization)
    stores = {name: (out / name).read_bytes() for name in ("completions.jsonl", "judgments.jsonl")}

    summary = aif.main([str(path), "--rebinarize"])
    assert (summary.completions_new, summary.judged_new, summary.completions) == (0, 0, 480)
    assert {name: (out / name).read_bytes() for name in stores} == stores  # nothing generated or judged
    first = parquet_bytes(out)
    assert set(first) == {f"{s}-00000-of-00001.parquet" for s in SPLITS}

    # lowest: the rejected answer is the worst-scored one (scores recomputed from the stored answers).
    raw = {r["prompt_id"]: r for r in lines(out / "raw.jsonl")}
    new = [r for split in SPLITS for r in rows(out, split)]
    assert len(new) == summary.pairs == 120 - sum(summary.dropped.values())
    for row in new:
        scores = task_judge(row["prompt"], [c["response"] for c in raw[row["prompt_id"]]["completions"]])
        assert (row["score_chosen"], row["score_rejected"]) == (max(scores), min(scores))
    old = {r["prompt_id"]: r for split in SPLITS for r in rows(base_out, split)}
    assert any(old[r["prompt_id"]]["rejected"] != r["rejected"] for r in new)  # random != lowest somewhere

    assert aif.main([str(path), "--rebinarize"]).pairs == summary.pairs
    assert parquet_bytes(out) == first  # reproducible to the byte
    assert {name: (out / name).read_bytes() for name in stores} == stores


# ------------------------------------------------------------------------------------------------ shards
def test_shards_then_rebinarize_cover_every_prompt(baseline, tiny_dir, tmp_path):
    _, base_out, _ = baseline
    out = tmp_path / "sharded"
    path = recipe(tmp_path, tiny_dir, out)
    for shard in ("0/2", "1/2"):
        summary = aif.main([str(path), "--shard", shard])
        assert (summary.prompts, summary.completions_new, summary.judged_new) == (60, 240, 60)
        assert not (out / "data").exists()  # a shard builds no dataset
    assert not (out / "completions.jsonl").exists()
    stores = [responses(out, f"completions.shard-{i}-of-2.jsonl") for i in (0, 1)]
    ids = [{key_parts(key)[0] for key in store} for store in stores]
    assert len(ids[0]) == len(ids[1]) == 60 and not ids[0] & ids[1]
    assert ids[0] | ids[1] == {key_parts(key)[0] for key in responses(base_out)}
    assert [complete_lines(out / f"judgments.shard-{i}-of-2.jsonl") for i in (0, 1)] == [60, 60]

    summary = aif.main([str(path), "--rebinarize"])
    assert (summary.prompts, summary.completions, summary.completions_new, summary.judged_new) == (120, 480, 0, 0)
    assert summary.judged_prompts == 120
    new = [r for split in SPLITS for r in rows(out, split)]
    base = [r for split in SPLITS for r in rows(base_out, split)]
    assert {r["prompt_id"] for r in new} == {r["prompt_id"] for r in base}
    answers = {**stores[0], **stores[1]}
    by_prompt: dict[str, set[str]] = {}
    for key, response in answers.items():
        by_prompt.setdefault(key_parts(key)[0], set()).add(response)
    for row in new:  # every pair is made of that prompt's answers from its own shard's store
        assert {row["chosen"][1]["content"], row["rejected"][1]["content"]} <= by_prompt[row["prompt_id"]]
    used = {i for row in new for i in (0, 1) if row["prompt_id"] in ids[i]}
    assert used == {0, 1}


# ------------------------------------------------------------------------------------------------ seeds
def test_same_recipe_twice_gives_identical_parquet(tiny_dir, tmp_path):
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        aif.main([str(recipe(tmp_path, tiny_dir, out, n=16, binarization={
            "score": "reward", "rejected": "random_lower", "ties": "drop", "seed": 7, "test_size": 0.25}))])
        runs.append(out)
    assert all_rows(runs[0]) == all_rows(runs[1])
    assert len(all_rows(runs[0])["test_prefs"]) >= 1 and all_rows(runs[0])["train_prefs"]
    assert parquet_bytes(runs[0]) == parquet_bytes(runs[1])
    assert responses(runs[0]) == responses(runs[1])
