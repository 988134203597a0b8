"""The preference stages beyond dDPO: `zephyr orpo`, `zephyr simpo` (TRL's CPO trainer), `zephyr kto`, `zephyr rm`.

Each loss is pinned at step 0 against its closed form (TRL 1.16's formulas), each stage trains and writes its
outputs, its recipe keys are listed, planned and range-checked, KTO's rows from pairs are exact, and zephyr's
checkpoints and resume work inside TRL's experimental trainers, which save checkpoints their own way."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import a, process_state_kept, stage_configs, u, write_hub_layout
from transformers import TrainerCallback

from zephyr import checkpointing
from zephyr.cli import main as cli_main
from zephyr.data import prepare_datasets
from zephyr.data.loading import DataError
from zephyr.hooks import recording
from zephyr.modeling import load_model, load_tokenizer
from zephyr.stages import STAGES as STAGE_TABLE
from zephyr.stages import kto, orpo, rm, simpo
from zephyr.stages.reliability import TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]
STAGES = {"orpo": orpo, "simpo": simpo, "kto": kto, "rm": rm}
LN2 = math.log(2)
REL = 1e-6  # float32 rounding of means over a few hundred token log-probs; a wrong term moves these by > 1e-2


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.fixture
def restore_process_state():
    with process_state_kept():
        yield


@pytest.fixture(scope="module")
def tied_rows(tiny_dir, tmp_path_factory):
    """Eight canonical pairs whose rejected answer is the chosen one (zephyr's data checks refuse such rows,
    so they go to the trainers directly): every preference term is then at its tie value."""
    _, data, _ = stage_configs("orpo", tiny_dir, tmp_path_factory.mktemp("tied"))
    rows, _, _ = prepare_datasets(data, "preference")
    return rows.select(range(8)).map(lambda row: {"rejected": row["chosen"]})


def paired_trainer(stage: str, tiny_dir, tmp_path, rows, **overrides):
    """The stage's trainer on in-memory `rows` (train and eval), built as the stage builds it."""
    model_args, _, args = stage_configs(stage, tiny_dir, tmp_path, **overrides)
    trainer_class = {"orpo": orpo.ZephyrORPOTrainer, "simpo": simpo.ZephyrCPOTrainer,
                     "rm": rm.ZephyrRewardTrainer}[stage]
    return trainer_class(model=load_model(model_args, reward_head=stage == "rm"), args=args, train_dataset=rows,
                         eval_dataset=rows, processing_class=load_tokenizer(model_args))


def sequence_nll(model, tokenizer, conversations: list[list[dict]]) -> float:
    """Mean next-token NLL over every token of every conversation, each run alone (no padding), in fp64."""
    total, count = 0.0, 0
    for messages in conversations:
        ids = torch.tensor([tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].double()
        total -= torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).sum().item()
        count += ids.shape[1] - 1
    return total / count


# ------------------------------------------------------------------------------------------------ step 0
def test_orpo_step0_is_the_chosen_nll_plus_beta_ln2_when_answers_tie(tiny_dir, tmp_path, tied_rows):
    """ORPO's loss is NLL(chosen) - beta * mean(log sigmoid(log odds ratio)) (trl/experimental/orpo/orpo_trainer.py,
    get_batch_loss_metrics); with chosen == rejected the log odds ratio is 0 and the second term beta * ln 2. TRL's
    NLL covers the prompt's tokens too (concatenated_forward: labels are every attended token), so the independent
    NLL here is over whole conversations."""
    beta = 0.25
    trainer = paired_trainer("orpo", tiny_dir, tmp_path, tied_rows, beta=beta)
    metrics = trainer.evaluate()
    assert metrics["eval_log_odds_chosen"] == 0.0 and metrics["eval_rewards/margins"] == 0.0
    assert metrics["eval_log_odds_ratio"] == pytest.approx(-LN2, rel=REL)
    model, tokenizer = trainer.model.eval(), trainer.processing_class
    nll = sequence_nll(model, tokenizer, [row["prompt"] + row["chosen"] for row in tied_rows])
    # TRL tokenizes the rendered template text; it must be the very token ids the template gives
    for row, ids in zip(tied_rows, trainer.train_dataset["chosen_input_ids"], strict=True):
        assert ids == tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True,
                                                    return_dict=True)["input_ids"]
    assert metrics["eval_nll_loss"] == pytest.approx(nll, rel=REL)
    assert metrics["eval_loss"] == pytest.approx(nll + beta * LN2, rel=REL)


@pytest.mark.parametrize(("beta", "ratio"), [(2.0, 0.5), (2.5, 0.8)])
def test_simpo_step0_is_softplus_of_the_margin_when_answers_tie(tiny_dir, tmp_path, tied_rows, beta, ratio):
    """TRL's simpo loss: -log sigmoid(beta * (avg logp chosen - avg logp rejected - simpo_gamma / beta))
    (trl/experimental/cpo/cpo_trainer.py, cpo_loss); tied answers leave -log sigmoid(-gamma) = softplus(gamma),
    gamma = gamma_beta_ratio x beta; cpo_alpha 0 adds no NLL."""
    trainer = paired_trainer("simpo", tiny_dir, tmp_path, tied_rows, beta=beta, gamma_beta_ratio=ratio)
    assert trainer.args.simpo_gamma == beta * ratio and trainer.args.cpo_alpha == 0.0
    metrics = trainer.evaluate()
    assert metrics["eval_rewards/margins"] == 0.0 and metrics["eval_nll_loss"] == 0.0
    assert metrics["eval_loss"] == pytest.approx(softplus(beta * ratio), rel=REL)


def test_cpo_variant_is_ln2_plus_the_answer_nll_when_answers_tie(tiny_dir, tmp_path, tied_rows):
    """loss_type sigmoid with cpo_alpha 1 is CPO: -log sigmoid(0) + NLL(chosen), whose NLL, unlike ORPO's, covers
    the answer's tokens only (CPO masks the prompt out of the labels)."""
    trainer = paired_trainer("simpo", tiny_dir, tmp_path, tied_rows, loss_type="sigmoid", cpo_alpha=1.0, beta=0.1)
    metrics = trainer.evaluate()
    whole = sequence_nll(trainer.model.eval(), trainer.processing_class,
                         [row["prompt"] + row["chosen"] for row in tied_rows])
    assert metrics["eval_nll_loss"] != pytest.approx(whole, rel=1e-3)  # not ORPO's NLL
    assert metrics["eval_loss"] == pytest.approx(LN2 + metrics["eval_nll_loss"], rel=REL)


def test_reward_model_step0_is_ln2_with_accuracy_0_when_answers_tie(tiny_dir, tmp_path, tied_rows):
    """-log sigmoid(score chosen - score rejected) with equal scores; accuracy counts strictly higher scores."""
    metrics = paired_trainer("rm", tiny_dir, tmp_path, tied_rows).evaluate()
    assert metrics["eval_margin"] == 0.0 and metrics["eval_accuracy"] == 0.0
    assert metrics["eval_loss"] == pytest.approx(LN2, rel=REL)


def test_kto_step0_is_one_half_with_the_policy_as_its_reference(tiny_dir, tmp_path):
    """KTO (loss_type kto): 1 - sigmoid(beta * (log-ratio - KL)) for desirable rows, 1 - sigmoid(beta * (KL -
    log-ratio)) for undesirable ones (trl/trainer/kto_trainer.py); at step 0 the log-ratios and the KL estimate are
    0, every row's loss is 1 - sigmoid(0) = 1/2, whatever beta."""
    trainer, _, _ = kto.build_trainer(*stage_configs("kto", tiny_dir, tmp_path, beta=0.3))
    labels = trainer.eval_dataset["label"]
    assert True in labels and False in labels  # both terms are pinned
    metrics = trainer.evaluate()
    assert metrics["eval_kl"] == 0.0
    assert abs(metrics["eval_rewards/chosen"]) < 1e-6 and abs(metrics["eval_rewards/rejected"]) < 1e-6
    assert metrics["eval_loss"] == pytest.approx(0.5, rel=REL)


# ------------------------------------------------------------------------------------------------ KTO's rows
def kto_data(folder: Path, **keys):
    from zephyr.configs import DataArguments

    return DataArguments(dataset_name=str(folder), dataset_train_split="train", dataset_test_split="test", **keys)


def test_pairs_become_one_desirable_and_one_undesirable_row_each(tmp_path):
    pairs = [{"prompt": f"q{i}", "chosen": [u(f"q{i}"), a(f"good {i}")], "rejected": [u(f"q{i}"), a(f"bad {i}")],
              "score_chosen": 8.0, "score_rejected": 2.0} for i in range(7)]
    folder = write_hub_layout(tmp_path / "ufb", {"train": pairs, "test": pairs[:3]})
    train, test, report = prepare_datasets(kto_data(folder), "unpaired")
    assert train.column_names == ["prompt", "completion", "label"]
    want = Counter((f"q{i}", f"{word} {i}", word == "good") for i in range(7) for word in ("good", "bad"))
    got = Counter((r["prompt"][0]["content"], r["completion"][0]["content"], r["label"]) for r in train)
    assert got == want  # every pair twice, nothing dropped, nothing added
    assert all(r["prompt"] == [u(r["prompt"][0]["content"])] and r["completion"][0]["role"] == "assistant"
               for r in train)
    assert len(test) == 6 and sorted(test["label"]) == [False] * 3 + [True] * 3
    assert (report.train_rows, report.eval_rows, report.dropped) == (14, 6, {})
    assert report.loaded == {f"{folder} [train]": 7, f"{folder} [test]": 3}  # pairs, as read


@pytest.mark.parametrize("form", ["standard", "conversational"])
def test_unpaired_rows_are_read_as_they_are(tmp_path, form):
    """TRL's unpaired format, with strings or with message lists."""
    rows = [("Say hi", "hi", True), ("Say hi", "bye", False), ("Count", "1 2 3", True)]
    if form == "standard":
        given = [{"prompt": p, "completion": c, "label": label} for p, c, label in rows]
    else:
        given = [{"prompt": [u(p)], "completion": [a(c)], "label": label} for p, c, label in rows]
    folder = write_hub_layout(tmp_path / "kto", {"train": given})
    train, test, report = prepare_datasets(kto_data(folder), "unpaired")
    assert test is None and report.train_rows == 3
    want = sorted(({"prompt": [u(p)], "completion": [a(c)], "label": label} for p, c, label in rows), key=repr)
    assert sorted(train, key=repr) == want


def test_an_unpaired_row_without_a_boolean_label_is_named(tmp_path):
    rows = [{"prompt": "Say hi", "completion": "hi", "label": "yes"}]
    folder = write_hub_layout(tmp_path / "kto", {"train": rows})
    with pytest.raises(DataError, match=r"\[train\]: row 0: 'label' must be true \(desirable\) or false"):
        prepare_datasets(kto_data(folder), "unpaired")


# ------------------------------------------------------------------------------------------------ short runs
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_short_run_trains_and_writes_its_outputs(stage, tiny_dir, tmp_path, restore_process_state):
    """The shipped tiny recipe, pointed at the test's tiny model and data, for a few steps: the eval loss falls
    below the loaded model's. KTO, from a random-init model (the recipe starts from the dSFT model), learns
    language before preferences, so its check is the loss of one batch seen again: its rows come in a fixed order,
    16 rows are 2 batches an epoch."""
    out = tmp_path / stage
    rows = "16" if stage == "kto" else "64"
    argv = [stage, str(REPO / "recipes" / "tiny" / f"{stage}.yaml"), "--model_name_or_path", str(tiny_dir / "model"),
            "--dataset_name", str(tiny_dir / "data" / "prefs"), "--output_dir", str(out), "--max_steps", "8",
            "--logging_steps", "1", "--per_device_train_batch_size", "8", "--max_train_samples", rows,
            "--max_eval_samples", "32", "--learning_rate", "1e-3", "--warmup_steps", "0", "--eval_on_start", "true"]
    assert cli_main(argv) == 0
    for name in ("model.safetensors", "all_results.json", "zephyr_recipe.yaml", "README.md", "config.json",
                 "tokenizer.json", "trainer_state.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "all_results.json").read_text())
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 8
    if stage == "kto":
        assert losses[0] == pytest.approx(0.5, rel=REL)  # step 0: the policy is its reference
        assert losses[6] < losses[4] < losses[2] < losses[0], losses  # the first batch, epochs 1 to 4
    else:
        before = next(h["eval_loss"] for h in history if "eval_loss" in h)  # eval_on_start: the model as loaded
        assert results["eval_loss"] < before, (results["eval_loss"], before)
    assert f"Trained with zephyr's **{STAGE_TABLE[stage].label}** stage" in (out / "README.md").read_text()
    if stage == "rm":
        assert 0.0 <= results["eval_accuracy"] <= 1.0
        assert json.loads((out / "config.json").read_text())["architectures"] == ["MistralForSequenceClassification"]
    else:
        assert "eval_rewards/margins" in results


# ------------------------------------------------------------------------------------------------ the command line
@pytest.mark.parametrize(("stage", "lines"), [
    ("orpo", ["  --beta float  [default: 0.1]", "  --max_completion_length int | null", "  --resume bool  [default: True]"]),
    ("simpo", ["  --loss_type str  [default: simpo]", "  --beta float  [default: 2.0]", "  --cpo_alpha float  [default: 0.0]",
               "  --simpo_gamma float | null  [default: None]", "  --gamma_beta_ratio float  [default: 0.5]"]),
    ("kto", ["  --precompute_ref_log_probs bool  [default: True]", "  --desirable_weight float  [default: 1.0]",
             "  --loss_type str  [default: kto]", "  --lm_head_labels_only bool  [default: True]"]),
    ("rm", ["  --center_rewards_coefficient float | null  [default: None]", "  --learning_rate float  ["]),
])
def test_help_lists_every_key(capsys, stage, lines):
    assert cli_main([stage, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: zephyr {stage} RECIPE.yaml")
    assert "model:" in out.splitlines() and "data:" in out.splitlines()
    shown = out.splitlines()
    for line in [*lines, "  --model_name_or_path str | null", "  --dataset_name str | null", "  --output_dir "]:
        assert any(s.startswith(line) for s in shown), line
    fields = [f.name for cls in STAGES[stage].CONFIG_CLASSES for f in dataclasses.fields(cls) if f.init]
    missing = [n for n in fields if not any(s.startswith((f"  --{n} ", f"  --{n}.")) for s in shown)]
    assert missing == []


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dry_run_of_the_tiny_recipe_plans_without_writing(capsys, tiny_dir, tmp_path, stage):
    out = tmp_path / "out"
    argv = [stage, str(REPO / "recipes" / "tiny" / f"{stage}.yaml"), "--model_name_or_path", str(tiny_dir / "model"),
            "--dataset_name", str(tiny_dir / "data" / "prefs"), "--output_dir", str(out), "--dry-run"]
    assert cli_main(argv) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"zephyr {stage} (dry run): recipe resolved and checked")
    assert f"data: {tiny_dir / 'data' / 'prefs'} [train: train_prefs, eval: test_prefs]" in shown
    assert not out.exists()


@pytest.mark.parametrize(("stage", "override", "key"), [
    ("orpo", ["--beta", "-1"], "beta"),
    ("orpo", ["--model_init_kwargs", "{dtype: bfloat16}"], "model_init_kwargs"),
    ("simpo", ["--beta", "-1"], "beta"),
    ("simpo", ["--loss_type", "kto_pair"], "loss_type"),
    ("simpo", ["--simpo_gamma", "-0.5"], "simpo_gamma"),
    ("kto", ["--beta", "0"], "beta"),
    ("kto", ["--loss_type", "sigmoid"], "loss_type"),
    ("kto", ["--train_sampling_strategy", "random"], "train_sampling_strategy"),
    ("kto", ["--per_device_train_batch_size", "1"], "per_device_train_batch_size"),
    ("rm", ["--center_rewards_coefficient", "-0.1"], "center_rewards_coefficient"),
])
def test_a_value_out_of_range_is_one_line_naming_the_key(capsys, tiny_dir, tmp_path, stage, override, key):
    out = tmp_path / "out"
    argv = [stage, str(REPO / "recipes" / "tiny" / f"{stage}.yaml"), "--model_name_or_path", str(tiny_dir / "model"),
            "--dataset_name", str(tiny_dir / "data" / "prefs"), "--output_dir", str(out), *override]
    for extra in ([], ["--dry-run"]):
        assert cli_main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("zephyr: error: command line: key") and f"'{key}'" in err, err
        assert not out.exists()


def test_the_loss_types_checked_are_the_ones_trl_accepts():
    from trl import KTOConfig

    from zephyr.rules import CPO_LOSS_TYPES, KTO_LOSS_TYPES
    from zephyr.trl_experimental import CPOConfig

    def choices(cls) -> tuple[str, ...]:
        return tuple(next(f for f in dataclasses.fields(cls) if f.name == "loss_type").metadata["choices"])

    assert (CPO_LOSS_TYPES, KTO_LOSS_TYPES) == (choices(CPOConfig), choices(KTOConfig))


def test_simpo_margin_takes_one_spelling(capsys, tiny_dir):
    argv = ["simpo", "--model_name_or_path", str(tiny_dir / "model"), "--dataset_name", str(tiny_dir / "data"),
            "--output_dir", "x", "--gamma_beta_ratio", "0.5", "--simpo_gamma", "1.0", "--dry-run"]
    assert cli_main(argv) == 2
    assert "keys 'simpo_gamma' and 'gamma_beta_ratio'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ checkpoints
class SignalAt(TrainerCallback):
    """SIGTERM to this process at the end of one step, as a scheduler would send it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("stage", ["orpo", "simpo", "kto", "rm"])
def test_stopped_then_resumed_run_ends_with_the_uninterrupted_weights(stage, tiny_dir, tmp_path):
    """TRL's ORPO, CPO, KTO and reward trainers save checkpoints their own way (a model card first): zephyr's
    staged, atomic checkpoint must still wrap the save, and resuming from it must give the same training."""
    settings = {"max_steps": 6, "save_strategy": "steps", "save_steps": 2, "learning_rate": 1e-3,
                "dataset_test_split": None, "max_train_samples": 48, "per_device_train_batch_size": 4}

    def run(name: str, stop_at: int | None = None, resume: bool = False):
        trainer, _, _ = STAGES[stage].build_trainer(*stage_configs(stage, tiny_dir, tmp_path / name, **settings))
        if stop_at is not None:
            trainer.add_callback(SignalAt(stop_at))
        checkpoint = checkpointing.last_complete_checkpoint(trainer.args.output_dir) if resume else None
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return trainer

    with recording() as calls:
        whole = run("whole")
    assert calls["transformers.Trainer._save_checkpoint"] == 3 and calls["transformers.Trainer._get_output_dir"] > 0
    assert calls["transformers.Trainer._get_grad_norm"] == 6
    out = Path(whole.args.output_dir)
    assert [p.name for p in checkpointing.checkpoints(out)] == ["checkpoint-6", "checkpoint-4", "checkpoint-2"]
    assert all(checkpointing.incomplete_reason(p) is None and (p / checkpointing.MANIFEST).is_file()
               for p in checkpointing.checkpoints(out))
    assert not [p for p in out.iterdir() if p.name.startswith("_")]  # no staging folder left

    with pytest.raises(TrainingInterrupted, match="training stopped by SIGTERM at step 3"):
        run("split", stop_at=2)
    assert [p.name for p in checkpointing.checkpoints(tmp_path / "split" / f"{stage}_out")] == [
        "checkpoint-3", "checkpoint-2"]
    resumed = run("split", resume=True)
    assert resumed.state.global_step == 6

    def losses(trainer) -> list[float]:
        return [h["loss"] for h in trainer.state.log_history if "loss" in h]

    assert len(losses(resumed)) == 6  # steps 1-3 restored from the checkpoint, 4-6 trained again
    assert losses(resumed) == pytest.approx(losses(whole), abs=1e-6)
    want, got = whole.model.state_dict(), resumed.model.state_dict()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-6, rtol=0, msg=name)


# ------------------------------------------------------------------------------------------------ handbook ORPO
HANDBOOK_ORPO = REPO / "tests" / "fixtures" / "handbook" / "old_layout_orpo.yaml"
SHIPPED_ORPO = REPO / "recipes" / "zephyr-141b-A35b" / "orpo" / "config_full.yaml"


def test_handbook_orpo_recipe_loads_as_written_and_as_shipped(capsys, tiny_dir, tmp_path):
    """The alignment-handbook's Zephyr-141B ORPO recipe in its own older layout (torch_dtype, dataset_mixer,
    dataset_splits, preprocessing_num_workers, max_prompt_length) and zephyr's copy in today's keys resolve to the
    same training, pointed at a local model and at local data with a `train` split; --dry-run plans both."""
    from zephyr.recipe import parse_stage_args

    rows = [{"prompt": f"q{i}", "chosen": [u(f"q{i}"), a(f"good {i}")], "rejected": [u(f"q{i}"), a(f"bad {i}")]}
            for i in range(4)]
    data = write_hub_layout(tmp_path / "capybara", {"train": rows})
    local = ["--model_name_or_path", str(tiny_dir / "model"), "--dataset_name", str(data), "--output_dir",
             str(tmp_path / "out"), "--push_to_hub", "false", "--bf16", "false", "--dtype", "float32",
             "--attn_implementation", "sdpa"]
    handbook = parse_stage_args([str(HANDBOOK_ORPO), *local], orpo.CONFIG_CLASSES, "orpo")
    shipped = parse_stage_args([str(SHIPPED_ORPO), *local], orpo.CONFIG_CLASSES, "orpo")
    for model, data_args, train in (handbook, shipped):
        assert (train.beta, train.learning_rate, train.max_length, train.num_train_epochs) == (0.05, 5e-6, 2048, 3)
        assert str(getattr(train.lr_scheduler_type, "value", train.lr_scheduler_type)) == "inverse_sqrt"
        assert (train.warmup_steps, train.optim, train.seed, train.per_device_train_batch_size) == (
            100, "adamw_bnb_8bit", 42, 1)
        assert train.activation_checkpointing is True
        assert train.activation_checkpointing_kwargs == {"use_reentrant": True}
        assert train.dataset_num_proc == min(8, len(os.sched_getaffinity(0)))
        assert train.hub_model_id == "zephyr-orpo-141b-A35b" and train.push_to_hub is False
        assert model.chat_template.startswith("{% for message in messages %}")
        assert model.model_revision == "main"
        source = data_args.dataset_mixture["datasets"][0]
        assert (source["id"], source["split"], source.get("role", "train")) == (str(data), "train", "train")
        assert len(data_args.dataset_mixture["datasets"]) == 1
    assert handbook[0].chat_template == shipped[0].chat_template
    for recipe in (HANDBOOK_ORPO, SHIPPED_ORPO):
        assert cli_main(["orpo", str(recipe), *local, "--dry-run"]) == 0
        shown = capsys.readouterr().out
        assert "beta 0.05 x odds-ratio loss" in shown and "max_length 2048, lr 5e-06 inverse_sqrt" in shown
    assert not (tmp_path / "out").exists()


def test_a_pipeline_plans_the_new_stages_in_order(tiny_dir, tmp_path, capsys):
    """`zephyr run` takes the new stages: each resolved and checked before anything runs, in the pipeline's order,
    and launchable like sft and dpo."""
    import yaml

    from zephyr.launch import TRAINING
    from zephyr.pipeline import run_pipeline

    overrides = {"model_name_or_path": str(tiny_dir / "model"), "dataset_name": str(tiny_dir / "data" / "prefs")}
    stages = {stage: {"recipe": str(REPO / "recipes" / "tiny" / f"{stage}.yaml"),
                      "overrides": {**overrides, "output_dir": f"${{root}}/{stage}"}} for stage in ("rm", "kto", "orpo")}
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"root": str(tmp_path / "runs"), "stages": stages}))
    result = run_pipeline(pipeline, dry_run=True)
    assert list(result["plan"]) == ["rm", "orpo", "kto"]  # STAGES order (rm before aif), not the file's
    shown = capsys.readouterr().out
    assert "[orpo] to run" in shown and "no reference model: loss = NLL(chosen)" in shown
    assert set(STAGES) <= set(TRAINING)
    assert not (tmp_path / "runs").exists()
