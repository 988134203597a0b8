"""Iterative rounds (`rounds: N`, `zephyr run --rounds N`): which stages a later round adds, what they read and
write, and that round 1 is left as it is (zephyr/rounds.py). The real 2-round run is in test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from zephyr.pipeline import load_pipeline, plan_steps, run_pipeline
from zephyr.recipe import RecipeError

REPO = Path(__file__).resolve().parents[1]


def tiny_pipeline(tmp_path: Path, **top) -> Path:
    spec = yaml.safe_load((REPO / "recipes" / "tiny" / "pipeline.yaml").read_text())
    for stage in spec["stages"].values():
        stage["recipe"] = str(REPO / stage["recipe"])
    spec.update(top)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_each_later_round_samples_and_trains_the_newest_policy_in_its_own_folders(tmp_path):
    root = tmp_path / "run"
    spec = load_pipeline(tiny_pipeline(tmp_path, rounds=3), root=str(root))
    assert spec["order"] == ["sft", "aif", "dpo", "aif_r2", "dpo_r2", "aif_r3", "dpo_r3", "eval"]
    stages = spec["stages"]
    assert stages["aif_r3"]["overrides"] == {**stages["aif"]["overrides"], "generators.0.model": f"{root}/round2/dpo",
                                             "output_dir": f"{root}/round3/aif"}
    assert stages["aif_r2"]["overrides"]["generators.0.model"] == f"{root}/dpo"  # round 1's policy answers
    assert stages["aif_r2"]["overrides"]["generators.1.model"] == f"{root}/model"  # the fixed generator stays
    assert stages["dpo_r3"]["overrides"] == {**stages["dpo"]["overrides"], "model_name_or_path": f"{root}/round2/dpo",
                                             "dataset_name": f"{root}/round3/aif", "output_dir": f"{root}/round3/dpo"}
    assert {stages[n]["kind"] for n in ("aif_r2", "aif_r3")} == {"aif"}
    # what is hashed leaves the root out, as for every stage: a moved run stays finished
    assert stages["dpo_r2"]["identity"]["output_dir"] == "${root}/round2/dpo"


def test_the_reference_is_the_previous_policy_or_the_dsft_model(tmp_path):
    previous = load_pipeline(tiny_pipeline(tmp_path, rounds=2), root="r")["stages"]["dpo_r2"]["overrides"]
    assert "ref_model_name_or_path" not in previous  # the policy it starts from, scored before training
    sft = load_pipeline(tiny_pipeline(tmp_path, rounds={"count": 2, "reference": "sft"}), root="r")
    assert sft["stages"]["dpo_r2"]["overrides"]["ref_model_name_or_path"] == "r/sft"


def test_adding_rounds_leaves_round_one_finished_and_the_eval_compares_every_round(tmp_path):
    one = plan_steps(load_pipeline(tiny_pipeline(tmp_path), root="r"), set(), None)
    spec = load_pipeline(tiny_pipeline(tmp_path), root="r", rounds=2)
    two = plan_steps(spec, set(), None)
    digests = {s.name: s.digest for s in one}
    assert {s.name: s.digest for s in two if s.name in ("tiny_model", "sft", "aif", "dpo")} == {
        k: v for k, v in digests.items() if k != "eval"}
    assert {s.name: s.digest for s in two}["eval"] != digests["eval"]  # it now compares two rounds
    eval_step = next(s for s in two if s.name == "eval")
    assert "model dpo_r2: transformers r/round2/dpo" in eval_step.lines
    assert [s.kind for s in two] == ["tiny_model", "sft", "aif", "dpo", "aif", "dpo", "eval"]
    plan = run_pipeline(tiny_pipeline(tmp_path), root=str(tmp_path / "dry"), rounds=2, dry_run=True)["plan"]
    assert list(plan) == ["tiny_model", "sft", "aif", "dpo", "aif_r2", "dpo_r2", "eval"]
    with pytest.raises(RecipeError, match=r"--only dpo_r3: not a stage of this pipeline"):
        run_pipeline(tiny_pipeline(tmp_path), root="r", rounds=2, only="dpo_r3", dry_run=True)


@pytest.mark.parametrize(("rounds", "message"), [
    (0, r"rounds.count: expected a whole number >= 1, got 0"),
    ({"count": 2, "reference": "base"}, r"rounds.reference: expected previous or sft, got 'base'"),
    ({"count": 2, "every": 1}, r"rounds: expected a number or \{count: N, reference: previous\|sft\}"),
])
def test_a_bad_rounds_setting_is_one_line_naming_the_key(tmp_path, rounds, message):
    with pytest.raises(RecipeError, match=message):
        load_pipeline(tiny_pipeline(tmp_path, rounds=rounds))


def test_rounds_need_the_stages_they_repeat_wired_through_overrides(tmp_path):
    path = tiny_pipeline(tmp_path, rounds=2)
    spec = yaml.safe_load(path.read_text())
    del spec["stages"]["aif"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(RecipeError, match="rounds: 2 needs an aif and a dpo stage to repeat"):
        load_pipeline(path)
    spec = yaml.safe_load(tiny_pipeline(tmp_path, rounds=2).read_text())
    del spec["stages"]["dpo"]["overrides"]["output_dir"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(RecipeError, match="the dpo stage's overrides must set output_dir"):
        load_pipeline(path)


# ---------------------------------------------------------------- the rounds measurement's held-out questions
def test_the_rounds_pipeline_holds_out_half_the_tasks_drawn_with_each_seed(tmp_path):
    """recipes/tiny/pipeline_rounds.yaml: every seed evaluates on its own half of the task list, so the seeds'
    questions differ (the demo keeps its fixed quarter); the AIF prompts are the other half, never evaluated."""
    import datasets

    from zephyr.embedded.build import write_datasets
    from zephyr.embedded.tasks import all_tasks, split_tasks

    spec = load_pipeline(REPO / "recipes" / "tiny" / "pipeline_rounds.yaml", root="r", seed=7)
    tiny_step = plan_steps(spec, set(), None)[0]
    command = tiny_step.commands[0]
    assert command[command.index("--eval-fraction") + 1] == "0.5"
    assert command[command.index("--split-seed") + 1] == "7"
    assert spec["order"] == ["sft", "aif", "dpo", "aif_r2", "dpo_r2", "eval"]

    folders = write_datasets(tmp_path / "data", eval_fraction=0.5, split_seed=7)
    questions = [json.loads(line) for line in (folders["eval"] / "questions.jsonl").read_text().splitlines()]
    prompts = set(datasets.load_dataset(str(folders["prompts"]), split="train")["prompt"])
    assert len(questions) == 134 and len(prompts) == len(all_tasks()) - 134
    assert not {q["turns"][0] for q in questions} & prompts
    assert sum(q["category"] == "add" for q in questions) == 50  # every kind split in the same proportion
    held_out = {t.prompt for t in split_tasks(0.5, 7)[1]}
    assert held_out == {q["turns"][0] for q in questions}
    assert held_out != {t.prompt for t in split_tasks(0.5, 8)[1]}
    assert len(split_tasks()[1]) == 67 and split_tasks()[1] == split_tasks(0.25, 0)[1]  # the demo's, unchanged


def test_a_bad_eval_fraction_is_refused_before_anything_is_built(tmp_path, capsys):
    from zephyr.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["tiny-model", "--output-dir", str(tmp_path / "t"), "--eval-fraction", "1.5"])
    assert exit_info.value.code == 2
    assert "--eval-fraction: expected a number between 0 and 1, got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
