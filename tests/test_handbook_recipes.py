"""The alignment-handbook's own Zephyr-7B-beta recipes, in both of its layouts (tests/fixtures/handbook/), load and
run in zephyr as they are, with only the overrides that point them at a local model, local data and an output
folder, plus what this machine cannot honour: bf16 without a bf16 GPU, flash-attn where it is missing, and
push_to_hub offline (the tests run offline, tests/conftest.py).

The local data has the layout of the handbook's datasets (ultrachat_200k: train_sft/test_sft,
ultrafeedback_binarized: train_prefs/test_prefs), so every split the recipes name is read from its own rows."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path

import pytest
import torch
from helpers import a, process_state_kept, u, write_hub_layout

from zephyr.cli import main as cli_main
from zephyr.configs import DataArguments, ModelArguments, ZephyrDPOConfig, ZephyrSFTConfig
from zephyr.data import prepare_datasets
from zephyr.recipe import RecipeError, parse_stage_args

FIXTURES = Path(__file__).parent / "fixtures" / "handbook"
LAYOUTS = ("old_layout", "new_layout")  # dataset_mixer/dataset_splits (2024) and dataset_mixture (2025)
CLASSES = {"sft": (ModelArguments, DataArguments, ZephyrSFTConfig),
           "dpo": (ModelArguments, DataArguments, ZephyrDPOConfig)}
KIND = {"sft": "sft", "dpo": "preference"}
SPLITS = {"sft": ("train_sft", "test_sft"), "dpo": ("train_prefs", "test_prefs")}
HELD_OUT = {"sft": 1000, "dpo": 2000}  # the newer layout's test_split_size
CORES = len(os.sched_getaffinity(0))
BF16_GPU = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
FLASH = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def recipe(layout: str, stage: str) -> Path:
    return FIXTURES / f"{layout}_{stage}.yaml"


def machine_overrides() -> list[str]:
    """What this machine cannot do as the recipes say: push to the hub offline; bf16 (and bf16 weights, which
    are slow on a CPU) without a bf16 GPU; flash-attn where it is not installed or there is no GPU."""
    out = ["--push_to_hub", "false"]
    if not BF16_GPU:
        out += ["--bf16", "false", "--dtype", "float32"]
    if not FLASH:
        out += ["--attn_implementation", "sdpa"]
    return out


def local(model: Path | str, data: Path | str, out: Path) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out)]


@pytest.fixture(scope="module")
def hub_data(tmp_path_factory) -> dict[str, Path]:
    """ultrachat_200k- and ultrafeedback_binarized-shaped folders, with more rows than the newer layout holds out
    (test_split_size 1000 and 2000), each row naming its split."""
    root = tmp_path_factory.mktemp("handbook-data")

    def chat(split: str, n: int) -> list[dict]:
        return [{"prompt": f"{split} question {i}", "prompt_id": f"{split}-{i}",
                 "messages": [u(f"{split} question {i}"), a(f"{split} answer {i}")]} for i in range(n)]

    def prefs(split: str, n: int) -> list[dict]:
        return [{"prompt": f"{split} question {i}", "prompt_id": f"{split}-{i}",
                 "chosen": [u(f"{split} question {i}"), a(f"good {i}")],
                 "rejected": [u(f"{split} question {i}"), a(f"bad {i}")],
                 "score_chosen": 8.0, "score_rejected": 3.0} for i in range(n)]

    return {"sft": write_hub_layout(root / "ultrachat", {"train_sft": chat("train_sft", 1100),
                                                         "test_sft": chat("test_sft", 30)}),
            "dpo": write_hub_layout(root / "ultrafeedback", {"train_prefs": prefs("train_prefs", 2100),
                                                             "test_prefs": prefs("test_prefs", 30)})}


def load(layout: str, stage: str, *overrides: str) -> tuple:
    return parse_stage_args([str(recipe(layout, stage)), *overrides], CLASSES[stage], stage)


# --------------------------------------------------------------------------------------------- loading (fast)
@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_handbook_recipe_loads_with_local_overrides(tmp_path, hub_data, layout, stage):
    model, data, train = load(layout, stage, *local("org/local-model", hub_data[stage], tmp_path / "out"),
                              *machine_overrides())
    assert model.model_name_or_path == "org/local-model" and train.output_dir == str(tmp_path / "out")
    # the mixture keeps the handbook's splits, roles and weights, pointed at the local folder
    train_split, test_split = SPLITS[stage]
    sources = [(d["id"], d["split"], d.get("role", "train"), d["weight"]) for d in data.dataset_mixture["datasets"]]
    test_role = "test" if layout == "old_layout" else "train"  # the newer layout mixes both, then holds out rows
    folder = str(hub_data[stage])
    assert sources == [(folder, train_split, "train", 1.0), (folder, test_split, test_role, 1.0)]
    assert data.dataset_mixture.get("test_split_size") == (None if layout == "old_layout" else HELD_OUT[stage])
    assert data.dataset_name is None
    # the handbook's values, under today's names
    assert train.warmup_steps == 0.1  # warmup_ratio
    assert train.activation_checkpointing is True and train.gradient_checkpointing is True
    assert train.activation_checkpointing_kwargs == {"use_reentrant": False}  # gradient_checkpointing_kwargs
    assert train.dataset_num_proc == min(12, CORES)
    assert train.num_train_epochs == 1.0 and train.seed == 42 and train.save_steps == 100
    assert train.push_to_hub is False and train.bf16 is BF16_GPU
    if stage == "sft":
        assert train.max_length == 2048 and train.learning_rate == 2e-05  # max_seq_length
        assert train.eval_strategy == "epoch" and train.per_device_train_batch_size == 16
        assert train.assistant_only_loss is False  # its chat template has no {% generation %} markers
        assert model.chat_template.startswith("{% for m in messages %}")
    else:
        assert train.max_length == 1024 and train.learning_rate == 5e-07 and train.beta == 0.01
        assert train.loss_type == ["sigmoid"] and train.optim == "adamw_torch"
        assert train.eval_strategy == "steps" and train.eval_steps == 100
        assert train.gradient_accumulation_steps == 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_handbook_torch_dtype_null_means_auto(tmp_path, hub_data, layout):
    overrides = [o for o in machine_overrides() if o not in ("--dtype", "float32")]
    model, _, _ = load(layout, "dpo", *local("org/m", hub_data["dpo"], tmp_path), *overrides)
    assert model.dtype == "auto"


def test_handbook_recipe_loads_as_written_where_the_machine_allows(tmp_path):
    """No override at all: on a bf16 GPU the recipe loads as it is; elsewhere only bf16 is refused (flash-attn
    and push_to_hub are checked when a stage starts, so `zephyr run --dry-run` passes on a login node)."""
    for layout in LAYOUTS:
        for stage in ("sft", "dpo"):
            if BF16_GPU:
                assert load(layout, stage)[2].bf16 is True
            else:
                with pytest.raises(RecipeError, match=r"invalid Zephyr(SFT|DPO)Config: .*bf16"):
                    load(layout, stage)
                assert load(layout, stage, "--bf16", "false")[0].model_name_or_path


def test_dataset_name_replaces_a_converted_dataset_mixer(tmp_path, hub_data, caplog):
    caplog.set_level(logging.WARNING)
    folder = hub_data["dpo"]
    _, data, _ = load("old_layout", "dpo", *local("org/m", folder, tmp_path), *machine_overrides())
    said = [r.getMessage() for r in caplog.records]
    converted = next(m for m in said if "converted to dataset_mixture" in m)
    assert converted.endswith("with 2 sources: HuggingFaceH4/ultrafeedback_binarized (split train_prefs, role train, "
                              "weight 1.0); HuggingFaceH4/ultrafeedback_binarized (split test_prefs, role test, "
                              "weight 1.0)")
    replaced = next(m for m in said if m.startswith("command line: dataset_name"))
    assert replaced.startswith(f"command line: dataset_name {folder} replaces HuggingFaceH4/ultrafeedback_binarized in "
                               "the recipe's dataset_mixture, whose splits, roles, weights and test_split_size stay")
    assert [d["id"] for d in data.dataset_mixture["datasets"]] == [str(folder)] * 2
    # with its own split keys, dataset_name replaces the mixture outright
    caplog.clear()
    _, data, _ = load("old_layout", "dpo", *local("org/m", folder, tmp_path), "--dataset_train_split", "train_prefs",
                      "--dataset_test_split", "test_prefs", *machine_overrides())
    assert data.dataset_mixture is None and data.dataset_name == str(folder)
    assert (data.dataset_train_split, data.dataset_test_split) == ("train_prefs", "test_prefs")
    assert any(r.getMessage().startswith(f"command line: dataset_name {folder} replaces the recipe's dataset_mixture "
                                         "(HuggingFaceH4/ultrafeedback_binarized (split train_prefs")
               for r in caplog.records)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_handbook_splits_on_a_single_local_file_never_evaluate_on_training_rows(tmp_path, layout):
    """A single file has one split: the handbook's train/test split names cannot both come from it."""
    rows = tmp_path / "prefs.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                            for i in range(5)), encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load(layout, "dpo", *local("org/m", rows, tmp_path / "out"), *machine_overrides())
    assert str(err.value).startswith(f"eval_strategy: steps needs an eval set, but dataset_name {rows} is a single "
                                     "file (one split: the training rows): set eval_strategy: no")
    # without evaluation, the file is the training data and there is no eval set
    _, data, _ = load(layout, "dpo", *local("org/m", rows, tmp_path / "out"), "--eval_strategy", "no",
                      *machine_overrides())
    train, test, _ = prepare_datasets(data, "preference")
    assert len(train) == 5 and test is None


@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_handbook_data_reads_each_named_split(tmp_path, hub_data, layout, stage):
    _, data, _ = load(layout, stage, *local("org/m", hub_data[stage], tmp_path), *machine_overrides())
    train, test, report = prepare_datasets(data, KIND[stage])
    train_split, test_split = SPLITS[stage]
    first_user = "messages" if stage == "sft" else "prompt"

    def origins(ds) -> set[str]:
        return {row[first_user][0]["content"].split()[0] for row in ds}

    texts = {r[first_user][0]["content"] for r in train}
    assert not texts & {r[first_user][0]["content"] for r in test}  # no eval row is a training row
    n_train = report.loaded[f"{hub_data[stage]} [{train_split}]"]
    if layout == "old_layout":
        assert origins(train) == {train_split} and origins(test) == {test_split}
        assert (len(train), len(test)) == (n_train, 30)
    else:  # both splits mixed, then test_split_size rows held out
        assert len(test) == HELD_OUT[stage] and len(train) + len(test) == n_train + 30


def test_gradient_checkpointing_kwargs_raise_no_library_warning(tmp_path, hub_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, train = load("new_layout", "sft", *local("org/m", hub_data["sft"], tmp_path), *machine_overrides())
    assert train.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert [str(w.message) for w in caught if "checkpointing" in str(w.message)] == []


@pytest.mark.skipif(CORES >= 12, reason="needs fewer than 12 cores")
def test_dataset_num_proc_is_fitted_to_the_cores_with_one_warning(tmp_path, hub_data, caplog):
    caplog.set_level(logging.WARNING, logger="zephyr.configs")
    _, _, train = load("new_layout", "dpo", *local("org/m", hub_data["dpo"], tmp_path), *machine_overrides())
    assert train.dataset_num_proc == CORES
    assert [r.getMessage() for r in caplog.records if r.name == "zephyr.configs"] == [
        f"dataset_num_proc: 12 is more than the {CORES} CPU core(s) this process may use: using {CORES}"]


# --------------------------------------------------------------------------------------------- training (slow)
@pytest.fixture
def restore_process_state():
    with process_state_kept():
        yield


@pytest.mark.slow
def test_handbook_recipes_train_sft_then_dpo(tmp_path, tiny_dir, restore_process_state):
    """`zephyr sft` then `zephyr dpo` with the handbook's older-layout recipes (dataset_mixer, torch_dtype: null,
    max_seq_length, warmup_ratio, ...) for two steps each on the tiny model and hub-layout data."""
    sft_out, dpo_out = tmp_path / "sft", tmp_path / "dpo"
    sft = ["sft", str(recipe("old_layout", "sft")), *local(tiny_dir / "model", tiny_dir / "data" / "sft", sft_out)]
    assert cli_main([*sft, *machine_overrides(), "--max_steps", "2"]) == 0
    dpo = ["dpo", str(recipe("old_layout", "dpo")), *local(sft_out, tiny_dir / "data" / "prefs", dpo_out)]
    assert cli_main([*dpo, *machine_overrides(), "--max_steps", "2"]) == 0

    for out, (train_split, test_split) in ((sft_out, SPLITS["sft"]), (dpo_out, SPLITS["dpo"])):
        report = json.loads((out / "data_report.json").read_text())
        source = tiny_dir / "data" / ("sft" if out == sft_out else "prefs")
        assert set(report["loaded"]) == {f"{source} [{train_split}]", f"{source} [{test_split}]"}
        assert report["eval_rows"] == report["loaded"][f"{source} [{test_split}]"]  # the test split, not train rows
        assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
        assert "eval_loss" in json.loads((out / "all_results.json").read_text())
        assert (out / "model.safetensors").is_file()
