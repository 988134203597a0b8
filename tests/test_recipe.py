"""Recipes: YAML + command-line overrides -> typed configs, alignment-handbook recipes, shipped recipes, CLI errors.

Nothing here loads a model or a dataset: only the config objects are built.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from zephyr.cli import main as cli_main
from zephyr.configs import DataArguments, ModelArguments, ZephyrDPOConfig, ZephyrSFTConfig
from zephyr.recipe import RecipeError, load_recipe, parse_overrides, parse_stage_args, read_yaml
from zephyr.stages.common import public_values

SFT = (ModelArguments, DataArguments, ZephyrSFTConfig)
DPO = (ModelArguments, DataArguments, ZephyrDPOConfig)
REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "recipes").rglob("*") if p.suffix in (".yaml", ".yml") and not p.stem.startswith("pipeline"))  # pipelines: tests/test_launch.py
PIPELINES = sorted((REPO / "recipes").rglob("pipeline*.yaml"))
BF16_GPU = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
CORES = len(os.sched_getaffinity(0))
# The keys a training recipe cannot do without, for tests about other keys: as YAML lines and as overrides.
NEEDED_YAML = "model_name_or_path: org/model\ndataset_name: org/data\n"
NEEDED = ["model_name_or_path=org/model", "dataset_name=org/data"]


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def compat_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "zephyr.compat" and r.levelno == logging.WARNING]


@pytest.fixture
def sft_recipe(tmp_path) -> Path:
    """A recipe in zephyr's own keys, exercising the value types a recipe uses."""
    return write(tmp_path, f"""
        # Model
        model_name_or_path: some-org/base-7b
        model_revision: v1.2
        dtype: float32
        use_peft: true
        lora_r: 8
        lora_dropout: 0.1
        lora_target_modules: [q_proj, k_proj, o_proj]

        # Data
        dataset_name: some-org/chats
        dataset_test_split: null
        max_train_samples: 100
        long_rows: drop

        # Trainer
        output_dir: {tmp_path / "out"}
        learning_rate: 2e-5
        warmup_steps: 0.05
        num_train_epochs: 2
        max_steps: 50
        max_length: 1024
        per_device_train_batch_size: 4
        gradient_checkpointing: false
        packing: true
        seed: 7
        lr_scheduler_type: cosine
        report_to: [tensorboard]
    """)


# --------------------------------------------------------------------------------------------- 1. YAML -> configs
def test_yaml_loads_with_exact_values(sft_recipe, tmp_path):
    # The reason the loader casts YAML values: YAML 1.1 reads 2e-5 (no dot) as a string.
    assert yaml.safe_load("learning_rate: 2e-5")["learning_rate"] == "2e-5"

    model, data, train = parse_stage_args([str(sft_recipe)], SFT, "sft")

    assert isinstance(model, ModelArguments) and isinstance(data, DataArguments)
    assert isinstance(train, ZephyrSFTConfig)
    assert model.model_name_or_path == "some-org/base-7b"
    assert model.model_revision == "v1.2"
    assert model.dtype == "float32"
    assert model.use_peft is True
    assert model.lora_r == 8 and type(model.lora_r) is int
    assert model.lora_dropout == 0.1
    assert model.lora_target_modules == ["q_proj", "k_proj", "o_proj"]
    assert model.lora_alpha == 32  # untouched default

    assert data.dataset_name == "some-org/chats"
    assert data.dataset_test_split is None
    assert data.max_train_samples == 100 and type(data.max_train_samples) is int
    assert data.long_rows == "drop"

    assert train.output_dir == str(tmp_path / "out")
    assert type(train.learning_rate) is float and train.learning_rate == 2e-05
    assert train.warmup_steps == 0.05
    assert type(train.num_train_epochs) is float and train.num_train_epochs == 2.0
    assert train.max_steps == 50 and type(train.max_steps) is int
    assert train.max_length == 1024
    assert train.per_device_train_batch_size == 4
    assert train.gradient_checkpointing is False
    assert train.packing is True
    assert train.seed == 7
    assert train.lr_scheduler_type == "cosine"
    assert train.report_to == ["tensorboard"]
    assert train.assistant_only_loss is True  # zephyr's default, not set in the recipe


def test_empty_recipe_and_overrides_only(tmp_path):
    empty = write(tmp_path, "# nothing yet\n")
    _, _, train = parse_stage_args([str(empty), *NEEDED, f"output_dir={tmp_path}"], SFT, "sft")
    assert train.output_dir == str(tmp_path)
    # Alone it names itself and what it lacks (tests/test_hostile_input.py: through the CLI).
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(empty))}: missing required key\(s\) model_name_or_path "):
        parse_stage_args([str(empty)], SFT, "sft")

    # No recipe at all: every key comes as an override.
    model, _, train = parse_stage_args(["--model_name_or_path", "m", "--dataset_name", "d", f"--output_dir={tmp_path}"],
                                       SFT, "sft")
    assert model.model_name_or_path == "m"
    assert train.output_dir == str(tmp_path)


# --------------------------------------------------------------------------------------------- 2. overrides
@pytest.mark.parametrize("override", [["--max_steps", "7"], ["--max_steps=7"], ["max_steps=7"]],
                         ids=["--key value", "--key=value", "key=value"])
def test_override_forms_win_over_yaml(sft_recipe, override):
    model, _, train = parse_stage_args([str(sft_recipe), *override], SFT, "sft")
    assert train.max_steps == 7 and type(train.max_steps) is int
    # everything else still comes from the file
    assert train.learning_rate == 2e-05
    assert model.lora_target_modules == ["q_proj", "k_proj", "o_proj"]


def test_several_overrides_mixed_forms(sft_recipe):
    model, data, train = parse_stage_args(
        [str(sft_recipe), "--learning_rate", "1e-4", "--lora-r=4", "max_train_samples=3", "--use_peft", "false"],
        SFT, "sft")
    assert train.learning_rate == 1e-4
    assert model.lora_r == 4  # dashes in a key read as underscores
    assert data.max_train_samples == 3
    assert model.use_peft is False


CAST_CASES = [
    (["--max_length", "512"], lambda m, d, t: t.max_length, 512),
    (["--max_length=null"], lambda m, d, t: t.max_length, None),
    (["max_length=none"], lambda m, d, t: t.max_length, None),
    (["--max_train_samples", "None"], lambda m, d, t: d.max_train_samples, None),
    (["--lora_target_modules", "q_proj,v_proj"], lambda m, d, t: m.lora_target_modules, ["q_proj", "v_proj"]),
    (["--lora_target_modules", "[q_proj, v_proj]"], lambda m, d, t: m.lora_target_modules, ["q_proj", "v_proj"]),
    (["--lora_target_modules", "q_proj"], lambda m, d, t: m.lora_target_modules, ["q_proj"]),
    (["--packing", "false"], lambda m, d, t: t.packing, False),
    (["--gradient_checkpointing", "true"], lambda m, d, t: t.gradient_checkpointing, True),
    (["--use_peft", "--lora_r", "4"], lambda m, d, t: (m.use_peft, m.lora_r), (True, 4)),
    (["--lora_r", "4", "--use_peft"], lambda m, d, t: (m.use_peft, m.lora_r), (True, 4)),
    (["--num_train_epochs", "3"], lambda m, d, t: t.num_train_epochs, 3.0),
    (["--warmup_steps", "0.2"], lambda m, d, t: t.warmup_steps, 0.2),
    (["--report_to", "wandb"], lambda m, d, t: t.report_to, ["wandb"]),
    (["--report_to", "[wandb, tensorboard]"], lambda m, d, t: t.report_to, ["wandb", "tensorboard"]),
    (["--gradient_checkpointing_kwargs", "{use_reentrant: false}"],
     lambda m, d, t: t.gradient_checkpointing_kwargs, {"use_reentrant": False}),
    (["--long_rows", "truncate"], lambda m, d, t: d.long_rows, "truncate"),
    (["--seed", "-1"], lambda m, d, t: t.seed, -1),
]


@pytest.mark.parametrize(("override", "get", "expected"), CAST_CASES, ids=[" ".join(c[0]) for c in CAST_CASES])
def test_override_casting(sft_recipe, override, get, expected):
    configs = parse_stage_args([str(sft_recipe), *override], SFT, "sft")
    value = get(*configs)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("key", "text"), [
    ("max_length", "512"),
    ("max_length", "null"),
    ("lora_target_modules", "[q_proj, v_proj]"),
    ("lora_target_modules", "q_proj,v_proj"),
    ("packing", "false"),
    ("learning_rate", "3e-4"),
    ("report_to", "[wandb, tensorboard]"),
    ("gradient_checkpointing_kwargs", "{use_reentrant: false}"),
])
def test_override_cast_same_as_yaml(tmp_path, key, text):
    """`key: TEXT` in a recipe and `--key TEXT` on the command line give the same config."""
    out = f"{NEEDED_YAML}output_dir: {tmp_path}\n"
    from_yaml = parse_stage_args([str(write(tmp_path, f"{out}{key}: {text}\n", "a.yaml"))], SFT, "sft")
    from_cli = parse_stage_args([str(write(tmp_path, out, "b.yaml")), f"--{key}", text], SFT, "sft")
    for a, b in zip(from_yaml, from_cli, strict=True):
        assert getattr(a, key, None) == getattr(b, key, None)
        assert dataclasses.asdict(a) == dataclasses.asdict(b)


@pytest.mark.parametrize(("override", "key"), [
    (["--max_steps", "abc"], "max_steps"),
    (["--num_train_epochs", "x"], "num_train_epochs"),
    (["--max_length=1.5"], "max_length"),
    (["--use_peft", "maybe"], "use_peft"),
    (["lora_r=four"], "lora_r"),
    (["--lora_target_modules", "[q_proj, v_proj"], "lora_target_modules"),
    (["--long_rows", "sometimes"], "long_rows"),
])
def test_bad_override_value_names_key_and_command_line(sft_recipe, override, key):
    with pytest.raises(RecipeError) as info:
        parse_stage_args([str(sft_recipe), *override], SFT, "sft")
    message = str(info.value)
    assert f"'{key}'" in message
    assert message.startswith("command line:")  # the bad value is not in the file
    assert str(sft_recipe) not in message


def test_bad_yaml_value_names_file_and_key(tmp_path):
    path = write(tmp_path, f"output_dir: {tmp_path}\nmax_steps: lots\n")
    with pytest.raises(RecipeError, match=r"key 'max_steps': expected an integer, got 'lots'") as info:
        parse_stage_args([str(path)], SFT, "sft")
    assert str(info.value).startswith(f"{path}:")


def test_unquoted_yaml_no_for_a_text_key(tmp_path):
    # YAML 1.1 reads `no` as false; the error says to quote it.
    path = write(tmp_path, f"{NEEDED_YAML}output_dir: {tmp_path}\neval_strategy: no\n")
    with pytest.raises(RecipeError, match=r"'eval_strategy'.*quote it"):
        parse_stage_args([str(path)], SFT, "sft")
    quoted = write(tmp_path, f"{NEEDED_YAML}output_dir: {tmp_path}\neval_strategy: \"no\"\n", "quoted.yaml")
    assert parse_stage_args([str(quoted)], SFT, "sft")[2].eval_strategy == "no"


def test_unreadable_override():
    with pytest.raises(RecipeError, match=r"Cannot read override 'stray'"):
        load_recipe(None, ["--max_steps", "3", "stray"], SFT, "sft")


# --------------------------------------------------------------------------------------------- 3. unknown keys
def test_unknown_yaml_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, f"output_dir: {tmp_path}\nlearnig_rate: 1e-4\n")
    with pytest.raises(RecipeError) as info:
        parse_stage_args([str(path)], SFT, "sft")
    message = str(info.value)
    assert str(path) in message
    assert "'learnig_rate'" in message
    assert "did you mean 'learning_rate'" in message


def test_unknown_yaml_key_without_close_match(tmp_path):
    path = write(tmp_path, f"output_dir: {tmp_path}\nzzqqxx: 1\n")
    with pytest.raises(RecipeError, match=r"unknown key 'zzqqxx'") as info:
        parse_stage_args([str(path)], SFT, "sft")
    assert "did you mean" not in str(info.value)


def test_unknown_override_key_says_command_line(sft_recipe):
    with pytest.raises(RecipeError) as info:
        parse_stage_args([str(sft_recipe), "--learnig_rate", "1e-4"], SFT, "sft")
    message = str(info.value)
    assert "command line" in message
    assert "'learnig_rate'" in message
    assert "did you mean 'learning_rate'" in message
    assert str(sft_recipe) not in message


def test_stage_specific_keys(tmp_path):
    # `beta` is a DPO key: an SFT recipe may not use it, a DPO recipe may.
    path = write(tmp_path, f"{NEEDED_YAML}output_dir: {tmp_path}\nbeta: 0.05\n")
    with pytest.raises(RecipeError, match=r"unknown key 'beta'"):
        parse_stage_args([str(path)], SFT, "sft")
    assert parse_stage_args([str(path)], DPO, "dpo")[2].beta == 0.05


# --------------------------------------------------------------------------------------------- 4. broken files
def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, f"""
        model_name_or_path: m
        output_dir: {tmp_path}
        learning_rate: 2e-5
        dataset_name: a: b
        seed: 1
    """)
    with pytest.raises(RecipeError) as info:
        parse_stage_args([str(path)], SFT, "sft")
    message = str(info.value)
    assert message.startswith(f"{path}:4:"), message  # line 4 is the broken one
    assert "YAML syntax error" in message


def test_missing_recipe_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match="not found") as info:
        parse_stage_args([str(missing)], SFT, "sft")
    assert str(missing) in str(info.value)


def test_recipe_that_is_not_a_mapping(tmp_path):
    path = write(tmp_path, "- learning_rate: 1e-4\n- seed: 1\n")
    with pytest.raises(RecipeError, match="mapping") as info:
        read_yaml(path)
    assert str(path) in str(info.value) and "list" in str(info.value)
    with pytest.raises(RecipeError, match="mapping"):
        parse_stage_args([str(path)], SFT, "sft")


def test_bf16_true_without_a_bf16_gpu(tmp_path):
    """Handbook recipes say `bf16: true`. Where that is impossible transformers refuses, as a RecipeError."""
    path = write(tmp_path, f"output_dir: {tmp_path}\nbf16: true\n")
    if BF16_GPU:
        assert parse_stage_args([str(path)], SFT, "sft")[2].bf16 is True
    else:
        with pytest.raises(RecipeError, match=r"invalid ZephyrSFTConfig.*bf16"):
            parse_stage_args([str(path)], SFT, "sft")


# --------------------------------------------------------------------------------------------- 5. handbook recipes
HANDBOOK_SFT = """
    # Model arguments
    model_name_or_path: mistralai/Mistral-7B-v0.1
    model_revision: main
    torch_dtype: bfloat16
    attn_implementation: sdpa

    # Data training arguments
    chat_template: "{{% for m in messages %}}<|{{{{ m['role'] }}}}|>{{{{ m['content'] }}}}{{% endfor %}}"
    dataset_mixture:
      datasets:
        - id: HuggingFaceH4/ultrachat_200k
          config: default
          split: train_sft
          columns:
            - messages
          weight: 0.5
      seed: 0
      test_split_size: 500
    preprocessing_num_workers: 4

    # SFT trainer config
    do_eval: true
    evaluation_strategy: epoch
    gradient_accumulation_steps: 2
    gradient_checkpointing: true
    gradient_checkpointing_kwargs:
      use_reentrant: false
    hub_model_id: someone/mistral-7b-sft
    hub_strategy: every_save
    learning_rate: 2.0e-05
    log_level: info
    logging_steps: 5
    logging_strategy: steps
    lr_scheduler_type: cosine
    max_seq_length: 2048
    max_steps: -1
    num_train_epochs: 1
    output_dir: {out}
    overwrite_output_dir: true
    per_device_eval_batch_size: 8
    per_device_train_batch_size: 16
    remove_unused_columns: true
    report_to:
    - wandb
    save_strategy: "steps"
    save_steps: 100
    save_total_limit: 1
    seed: 42
    warmup_ratio: 0.1
"""

HANDBOOK_DPO = """
    # Model arguments
    model_name_or_path: alignment-handbook/zephyr-7b-sft-full
    torch_dtype: bfloat16
    use_flash_attention_2: true

    # Data training arguments (the older mixer form)
    dataset_mixer:
      HuggingFaceH4/ultrafeedback_binarized: 1.0
    dataset_splits:
    - train_prefs
    - test_prefs
    preprocessing_num_workers: 12

    # DPO trainer config
    beta: 0.01
    do_eval: true
    evaluation_strategy: steps
    eval_steps: 100
    gradient_accumulation_steps: 2
    gradient_checkpointing: true
    gradient_checkpointing_kwargs:
      use_reentrant: False
    hub_model_id: someone/zephyr-7b-dpo
    learning_rate: 5.0e-7
    log_level: info
    logging_steps: 10
    loss_type: sigmoid
    lr_scheduler_type: cosine
    max_length: 1024
    max_prompt_length: 512
    max_completion_length: 512
    num_train_epochs: 1
    optim: adamw_torch
    output_dir: {out}
    overwrite_output_dir: true
    per_device_train_batch_size: 8
    per_device_eval_batch_size: 8
    rpo_alpha: 0.5
    save_strategy: "steps"
    save_steps: 100
    save_total_limit: 1
    seed: 42
    warmup_ratio: 0.1
"""


def test_handbook_sft_recipe(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="zephyr.compat")
    path = write(tmp_path, HANDBOOK_SFT.format(out=tmp_path / "sft"))
    model, data, train = parse_stage_args([str(path)], SFT, "sft")

    assert model.model_name_or_path == "mistralai/Mistral-7B-v0.1"
    assert model.dtype == "bfloat16"  # torch_dtype
    assert model.attn_implementation == "sdpa"
    assert model.chat_template == "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    assert data.dataset_mixture == {
        "datasets": [{"id": "HuggingFaceH4/ultrachat_200k", "config": "default", "split": "train_sft",
                      "columns": ["messages"], "weight": 0.5}],
        "seed": 0,
        "test_split_size": 500,
    }
    assert train.dataset_num_proc == min(4, CORES)  # preprocessing_num_workers, at most one per core
    assert train.max_length == 2048  # max_seq_length
    assert train.warmup_steps == 0.1  # warmup_ratio: transformers 5 reads < 1 as a ratio
    assert train.eval_strategy == "epoch"  # evaluation_strategy
    assert train.gradient_checkpointing is True
    assert train.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert train.hub_model_id == "someone/mistral-7b-sft"
    assert train.hub_strategy == "every_save"
    assert train.learning_rate == 2e-05
    assert train.log_level == "info"
    assert train.max_steps == -1
    assert train.num_train_epochs == 1.0
    assert train.per_device_train_batch_size == 16
    assert train.report_to == ["wandb"]
    assert train.save_strategy == "steps" and train.save_steps == 100
    assert train.seed == 42
    # its chat_template has no {% generation %} markers: the loss covers every token, as in the handbook
    assert train.assistant_only_loss is False

    warnings = compat_warnings(caplog)
    for ignored in ("overwrite_output_dir", "do_eval"):
        assert any(f"ignoring '{ignored}" in w for w in warnings), (ignored, warnings)
    for old, new in [("torch_dtype", "dtype"), ("max_seq_length", "max_length"),
                     ("evaluation_strategy", "eval_strategy"), ("warmup_ratio", "warmup_steps"),
                     ("preprocessing_num_workers", "dataset_num_proc")]:
        assert any(f"'{old}' is now '{new}'" in w for w in warnings), (old, warnings)
    assert all(str(path) in w for w in warnings)


def test_handbook_dpo_recipe(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="zephyr.compat")
    path = write(tmp_path, HANDBOOK_DPO.format(out=tmp_path / "dpo"))
    model, data, train = parse_stage_args([str(path)], DPO, "dpo")

    assert isinstance(train, ZephyrDPOConfig)
    assert model.model_name_or_path == "alignment-handbook/zephyr-7b-sft-full"
    assert model.dtype == "bfloat16"
    assert model.attn_implementation == "flash_attention_2"  # use_flash_attention_2
    # dataset_mixer x dataset_splits: the fraction applies to train splits, test splits are taken whole
    assert data.dataset_mixture == {
        "datasets": [
            {"id": "HuggingFaceH4/ultrafeedback_binarized", "config": None, "split": "train_prefs",
             "role": "train", "weight": 1.0},
            {"id": "HuggingFaceH4/ultrafeedback_binarized", "config": None, "split": "test_prefs",
             "role": "test", "weight": 1.0},
        ],
        "seed": 42,
    }
    assert train.dataset_num_proc == min(12, CORES)
    assert train.beta == 0.01
    assert train.loss_type == ["sigmoid", "sft"]  # rpo_alpha
    assert train.loss_weights == [1.0, 0.5]
    assert train.max_length == 1024
    assert train.eval_strategy == "steps" and train.eval_steps == 100
    assert train.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert train.learning_rate == 5e-07
    assert train.warmup_steps == 0.1
    assert train.optim == "adamw_torch"
    assert train.hub_model_id == "someone/zephyr-7b-dpo"
    assert train.seed == 42

    warnings = compat_warnings(caplog)
    for ignored in ("max_prompt_length", "max_completion_length", "overwrite_output_dir", "do_eval"):
        assert any(f"ignoring '{ignored}" in w for w in warnings), (ignored, warnings)
    assert any("rpo_alpha" in w and "loss_weights [1.0, 0.5]" in w for w in warnings), warnings
    assert any("use_flash_attention_2" in w for w in warnings), warnings
    assert any("dataset_mixer" in w and "2 sources" in w for w in warnings), warnings


def test_handbook_dpo_loss_type_string_without_rpo_alpha(tmp_path):
    path = write(tmp_path, f"{NEEDED_YAML}output_dir: {tmp_path}\nloss_type: ipo\n")
    assert parse_stage_args([str(path)], DPO, "dpo")[2].loss_type == ["ipo"]


def test_mixer_fraction_and_configs(tmp_path):
    path = write(tmp_path, f"""
        model_name_or_path: org/model
        output_dir: {tmp_path}
        dataset_mixer:
          org/a: 0.25
          org/b: 2
        dataset_splits: [train, test]
        dataset_configs: [cfg_a, cfg_b]
    """)
    data = parse_stage_args([str(path)], SFT, "sft")[1]
    assert data.dataset_mixture == {
        "datasets": [
            {"id": "org/a", "config": "cfg_a", "split": "train", "role": "train", "weight": 0.25},
            {"id": "org/a", "config": "cfg_a", "split": "test", "role": "test", "weight": 1.0},
            {"id": "org/b", "config": "cfg_b", "split": "train", "role": "train", "weight": 2.0},
            {"id": "org/b", "config": "cfg_b", "split": "test", "role": "test", "weight": 1.0},
        ],
        "seed": 0,
    }


def test_new_key_wins_over_legacy_key(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="zephyr.compat")
    path = write(tmp_path, f"{NEEDED_YAML}output_dir: {tmp_path}\ntorch_dtype: float16\ndtype: float32\n")
    assert parse_stage_args([str(path)], SFT, "sft")[0].dtype == "float32"
    assert any("'torch_dtype' ignored because 'dtype' is also set" in w for w in compat_warnings(caplog))


def test_legacy_keys_as_overrides(sft_recipe, caplog):
    caplog.set_level(logging.WARNING, logger="zephyr.compat")
    model, _, train = parse_stage_args(
        [str(sft_recipe), "--torch_dtype", "bfloat16", "max_seq_length=64", "--overwrite_output_dir"], SFT, "sft")
    assert model.dtype == "bfloat16"
    assert train.max_length == 64
    warnings = compat_warnings(caplog)
    assert any(w.startswith("command line: ignoring 'overwrite_output_dir") for w in warnings), warnings


@pytest.mark.parametrize(("alpha", "weight"), [("0.25", 0.25), ("1", 1.0)])
def test_rpo_alpha_override(tmp_path, alpha, weight):
    _, _, train = parse_stage_args([*NEEDED, f"output_dir={tmp_path}", "--rpo_alpha", alpha], DPO, "dpo")
    assert train.loss_type == ["sigmoid", "sft"]
    assert train.loss_weights == [1.0, weight]


def test_bad_rpo_alpha_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match=r"command line: key 'rpo_alpha': expected a number, got 'abc'"):
        parse_stage_args([f"output_dir={tmp_path}", "--rpo_alpha", "abc"], DPO, "dpo")


# --------------------------------------------------------------------------------------------- 6. shipped recipes
def test_recipes_are_shipped():
    assert SHIPPED, "no YAML under recipes/"
    assert REPO / "recipes" / "tiny" / "sft.yaml" in SHIPPED


def stage_of(path: Path) -> tuple[tuple[type, ...], str]:
    """Config classes for a shipped recipe, from its path: .../aif... -> AIF, .../dpo... -> DPO, else SFT."""
    rel = str(path.relative_to(REPO))
    if "aif" in rel:
        from zephyr.aif.config import AIFConfig

        return (AIFConfig,), "aif"
    if "eval" in rel:
        from zephyr.evaluation.config import EvalConfig

        return (EvalConfig,), "eval"
    if "sweep" in rel:
        from zephyr.sweep import SweepConfig

        return (SweepConfig,), "sweep"
    for stage in ("orpo", "simpo", "kto", "rm"):  # recipes/<name>/<stage>/... or recipes/tiny/<stage>.yaml
        if stage in path.relative_to(REPO).parts or path.stem == stage:
            return importlib.import_module(f"zephyr.stages.{stage}").CONFIG_CLASSES, stage
    return (DPO, "dpo") if "dpo" in rel else (SFT, "sft")


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_recipe_loads(path, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="zephyr.compat")
    classes, stage = stage_of(path)
    raw = read_yaml(path)
    assert raw.get("output_dir"), "a shipped recipe names its output_dir"
    configs = parse_stage_args([str(path), f"--output_dir={tmp_path / 'out'}"], classes, stage)

    assert [type(c) for c in configs] == list(classes)
    assert configs[-1].output_dir == str(tmp_path / "out")
    # Shipped recipes use today's keys: nothing to translate or ignore.
    assert compat_warnings(caplog) == []
    if stage == "aif":
        (cfg,) = configs
        assert cfg.generators and all(g.name for g in cfg.generators)
        return
    if stage == "eval":
        (cfg,) = configs
        assert cfg.models and cfg.questions
        return
    if stage == "sweep":
        (cfg,) = configs
        assert cfg.space and (REPO / cfg.base).is_file()
        return

    model, data, train = configs
    assert model.model_name_or_path
    assert data.dataset_name or data.dataset_mixture
    assert isinstance(train.learning_rate, float) and 0 < train.learning_rate < 1
    assert train.bf16 is (BF16_GPU and not train.fp16)  # left to the machine, not forced by a recipe
    if "qlora" in path.name:
        assert model.use_peft is True and model.load_in_4bit is True


def test_tiny_sft_recipe_values(tmp_path):
    path = REPO / "recipes" / "tiny" / "sft.yaml"
    model, data, train = parse_stage_args([str(path), f"output_dir={tmp_path}"], SFT, "sft")
    assert model.model_name_or_path == "outputs/tiny/model"
    assert model.dtype == "float32"
    assert [(d["split"], d.get("role", "train")) for d in data.dataset_mixture["datasets"]] == [
        ("train_sft", "train"), ("test_sft", "test")]
    assert train.assistant_only_loss is True
    assert train.packing is False
    assert isinstance(train.max_length, int) and isinstance(train.learning_rate, float)
    assert train.eval_strategy == "epoch"
    assert train.report_to == []  # `none`


def test_tiny_dpo_recipe_values(tmp_path):
    path = REPO / "recipes" / "tiny" / "dpo.yaml"
    model, data, train = parse_stage_args([str(path), f"output_dir={tmp_path}"], DPO, "dpo")
    assert model.model_name_or_path == "outputs/tiny/sft"  # starts from the dSFT model
    assert data.dataset_name == "outputs/tiny/aif"  # trains on the AIF pairs
    assert (data.dataset_train_split, data.dataset_test_split) == ("train_prefs", "test_prefs")
    assert train.loss_type == ["sigmoid"] and 0 < train.beta <= 1


@pytest.mark.parametrize("path", PIPELINES, ids=[str(p.relative_to(REPO)) for p in PIPELINES])
def test_shipped_pipeline_wires_every_stage(path, tmp_path):
    from zephyr.pipeline import as_override, load_pipeline

    spec = load_pipeline(path, root=str(tmp_path / "root"), seed=7)
    assert spec["order"] in (["sft", "aif", "dpo", "eval"], ["sft", "dpo"], ["sft", "rm", "aif", "dpo", "eval"],
                             ["sft", "aif", "dpo", "aif_r2", "dpo_r2", "eval"])
    for name, stage in spec["stages"].items():
        overrides = [as_override(k, v) for k, v in stage["overrides"].items()]
        classes, kind = stage_of(Path(stage["recipe"]).resolve())
        configs = parse_stage_args([stage["recipe"], *overrides], classes, kind)
        folder = f"round2/{stage['kind']}" if name.endswith("_r2") else name  # a later round has its own folders
        assert configs[-1].output_dir == str(tmp_path / "root" / folder)  # every stage writes under the root
        if name in ("sft", "dpo"):
            assert configs[-1].seed == 7
    assert spec["tiny_model"] is None or spec["tiny_model"]["seed"] == 7


# --------------------------------------------------------------------------------------------- 7. secrets
def test_public_values_drop_secrets(sft_recipe, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    configs = parse_stage_args([str(sft_recipe), "--hub_token", "hf_SECRET123"], SFT, "sft")
    # the run still gets it, through the environment huggingface_hub reads, not inside the pickled arguments
    assert configs[2].hub_token is None and os.environ["HF_TOKEN"] == "hf_SECRET123"
    values = public_values(*configs)
    dumped = json.dumps(values)
    assert "hf_SECRET123" not in dumped
    assert "hub_token" not in values
    # ... and the rest is there, as plain JSON values
    assert values["learning_rate"] == 2e-05
    assert values["model_name_or_path"] == "some-org/base-7b"
    assert values["lora_target_modules"] == ["q_proj", "k_proj", "o_proj"]
    assert values["lr_scheduler_type"] == "cosine"
    assert values["assistant_only_loss"] is True


def test_public_values_drop_secrets_dpo(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    configs = parse_stage_args([*NEEDED, f"output_dir={tmp_path}", "hub_token=hf_SECRET123", "--beta", "0.2"], DPO,
                               "dpo")
    values = public_values(*configs)
    assert "hf_SECRET123" not in json.dumps(values)
    assert values["beta"] == 0.2


# --------------------------------------------------------------------------------------------- 8. defaults
def test_sft_defaults(tmp_path):
    cfg = ZephyrSFTConfig(output_dir=str(tmp_path))
    assert cfg.assistant_only_loss is True
    assert cfg.bf16 is BF16_GPU
    if not torch.cuda.is_available():
        assert cfg.bf16 is False  # TRL's default (True) would be refused on a CPU-only machine
    assert cfg.dataloader_pin_memory is torch.cuda.is_available()
    defaults = {f.name: f.default for f in dataclasses.fields(ZephyrSFTConfig)}
    assert defaults["report_to"] == "none"
    assert cfg.report_to == []  # transformers resolves "none" to no integrations
    assert cfg.resume is True
    assert cfg.save_strategy == "epoch"
    assert cfg.logging_steps == 10


def test_dpo_defaults(tmp_path):
    cfg = ZephyrDPOConfig(output_dir=str(tmp_path))
    assert cfg.beta == 0.1
    assert cfg.loss_type == ["sigmoid"]
    assert cfg.loss_weights is None
    assert cfg.bf16 is BF16_GPU
    assert cfg.report_to == []
    assert cfg.resume is True


def test_recipe_defaults_match_class_defaults(tmp_path):
    _, _, train = parse_stage_args([*NEEDED, f"output_dir={tmp_path}"], SFT, "sft")
    assert train.assistant_only_loss is True
    assert train.bf16 is BF16_GPU
    assert train.report_to == []


# --------------------------------------------------------------------------------------------- 9. CLI
def test_cli_unknown_key_is_one_line_exit_2(tmp_path, capsys):
    bad = write(tmp_path, f"output_dir: {tmp_path}\nlearnig_rate: 1e-4\n")
    assert cli_main(["sft", str(bad)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("zephyr: error: ")
    assert str(bad) in lines[0] and "'learnig_rate'" in lines[0] and "did you mean 'learning_rate'" in lines[0]
    assert "Traceback" not in err


def test_cli_bad_override_and_missing_file(tmp_path, capsys):
    recipe = write(tmp_path, f"output_dir: {tmp_path}\n")
    assert cli_main(["dpo", str(recipe), "--max_steps", "abc"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["zephyr: error: command line: key 'max_steps': expected an integer, got 'abc'"]

    assert cli_main(["sft", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zephyr: error: Recipe file not found:") and "Traceback" not in err


def test_cli_unknown_command(capsys):
    assert cli_main(["nope"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("zephyr: unknown command 'nope'")
    assert "did you mean" not in captured.err
    assert "usage: zephyr COMMAND" in captured.err

    assert cli_main(["dpp"]) == 2
    assert "did you mean 'dpo'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_cli_help(capsys, argv):
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: zephyr COMMAND")
    assert re.search(r"^\s+sft\s+\S", out, re.M)
    assert re.search(r"^\s+dpo\s+\S", out, re.M)


def test_dotted_overrides_reach_nested_sections():
    from zephyr.aif.config import AIFConfig

    (cfg,) = load_recipe(REPO / "recipes" / "tiny" / "aif.yaml",
                         ["--judge.max_parse_retries", "5", "generators.1.temperature=0.3"], (AIFConfig,), "aif")
    assert cfg.judge.max_parse_retries == 5 and isinstance(cfg.judge.max_parse_retries, int)
    assert cfg.generators[1].temperature == 0.3 and cfg.generators[0].temperature == 1.0
    with pytest.raises(RecipeError, match="did you mean 'max_parse_retries'"):
        load_recipe(REPO / "recipes" / "tiny" / "aif.yaml", ["--judge.max_parse_retrie", "5"], (AIFConfig,), "aif")
    with pytest.raises(RecipeError, match="no item 7"):
        load_recipe(REPO / "recipes" / "tiny" / "aif.yaml", ["--generators.7.temperature", "1"], (AIFConfig,), "aif")


def test_bare_flag_followed_by_key_equals_value():
    assert parse_overrides(["--use_peft", "lora_r=8"]) == {"use_peft": "true", "lora_r": "8"}


def test_every_key_that_takes_a_list_takes_the_comma_form(sft_recipe):
    """`report_to` is None | str | list[str]: `tensorboard,wandb` is the list, as `[tensorboard, wandb]` is (a
    plain string reached transformers as one name and ended in its traceback)."""
    for spelling in ("tensorboard,wandb", "[tensorboard, wandb]"):
        _, _, train = load_recipe(sft_recipe, [f"report_to={spelling}"], SFT, "sft")
        assert train.report_to == ["tensorboard", "wandb"], spelling
    _, _, train = load_recipe(sft_recipe, ["report_to=tensorboard"], SFT, "sft")
    assert train.report_to in ("tensorboard", ["tensorboard"])
