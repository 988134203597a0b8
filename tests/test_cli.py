"""The command line a new user meets first: fast --help, every stage's keys under --help, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def zephyr(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zephyr.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_top_level_help_is_fast_and_quiet():
    start = time.perf_counter()
    proc = zephyr("--help")
    seconds = time.perf_counter() - start
    assert proc.returncode == 0 and "binarize" in proc.stdout and "run" in proc.stdout
    assert proc.stderr == ""  # no library warning (bitsandbytes' kernels notice) before anything ran
    assert seconds < 3.0, seconds  # imports no torch, datasets or trl (those take ~6 s on 2 cores)


@pytest.mark.parametrize("command, flag, lines", [
    ("sft", "--help", ["  --model_name_or_path str | null  [default: None]  Hub id or local folder",
                       "  --assistant_only_loss bool  [default: True]  Compute the loss on assistant turns only",
                       "  --dataset_mixture dict[str, Any] | null  [default: None]", "  --learning_rate float  ["]),
    ("dpo", "-h", ["  --packed_forward bool  [default: True]", "  --precompute_ref_log_probs bool  [default: True]",
                   "  --beta float  [default: 0.1]", "  --loss_type list[str]  [default: ['sigmoid']]"]),
    ("aif", "--help", ["  --prompts.id str  [required]", "  --generators.N.extra_body dict[str, Any] | null  [default: None]",
                       "  --judge.api_key_env str | null  [default: None]", "  --max_failure_rate float  ["]),
    ("eval", "-h", ["  --questions str", "  --models.N.model str", "  --reward_accuracy.policy ", "  --max_failure_rate "]),
    ("binarize", "--help", ["  --source str", "  --binarization.score ", "  --binarization.rejected "]),
    ("sweep", "-h", ["  base str  [required]  The stage recipe every trial starts from.",
                     "  strategy one of [grid, random, tpe]  [default: tpe]", "  pruning.n_startup_trials int  ["]),
])
def test_every_command_answers_help_with_its_keys_types_and_defaults(capsys, command, flag, lines):
    from zephyr.cli import main

    assert main([command, "recipe.yaml", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: zephyr {command} ")
    for line in lines:
        assert any(shown.startswith(line) for shown in out.splitlines()), line


def test_training_help_is_grouped_into_model_data_and_training_sections(capsys):
    from zephyr.cli import main

    main(["dpo", "--help"])
    headings = [line for line in capsys.readouterr().out.splitlines() if line and not line.startswith(" ")
                and line.endswith(":")]
    assert headings == ["model:", "data:",
                        "training (TRL DPOConfig and transformers TrainingArguments, with zephyr's defaults):"]


@pytest.mark.parametrize("command", ["run", "report", "tiny-model", "merge"])
def test_tool_commands_answer_help(capsys, command):
    from zephyr.cli import main

    with pytest.raises(SystemExit) as stop:  # argparse's own --help
        main([command, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: zephyr {command} ")


def test_stage_help_loads_no_library_noise():
    proc = zephyr("dpo", "--help")  # imports trl, hence peft and bitsandbytes: its kernel notice must not show
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_a_library_stays_for_any_mention_of_it_in_what_a_command_is_given(tmp_path, monkeypatch):
    from zephyr.optional_imports import deepspeed_requested, read_request, wandb_requested

    def requested(*argv: str) -> tuple[bool, bool]:
        texts, items = read_request(list(argv))
        return deepspeed_requested(texts), wandb_requested(texts, items)

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    plain, with_keys = tmp_path / "dpo.yaml", tmp_path / "dpo_ds.yaml"
    plain.write_text("beta: 0.1\nreport_to: [tensorboard]\n")
    with_keys.write_text("deepspeed: configs/ds_zero3.json  # TrainingArguments' own key\nreport_to: wandb\n")
    assert requested(str(plain), "beta=0.2", "--accelerate-config", "cpu_2proc", "x" * 5000) == (False, False)
    assert requested(str(with_keys)) == (True, True)
    assert requested(str(plain), "--deepspeed", "ds.json", "--report_to", "all") == (True, True)
    # a recipe named in a file given (a pipeline's stage recipe, relative to the pipeline's folder; a sweep's base)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pipeline.yaml").write_text("stages:\n  dpo:\n    recipe: ../dpo_ds.yaml\n")
    (tmp_path / "sweep.yaml").write_text(f"base: {with_keys}\n")
    assert requested(str(tmp_path / "sub" / "pipeline.yaml")) == requested(str(tmp_path / "sweep.yaml")) == (True, True)
    big = tmp_path / "prefs.json"  # a dataset file is not read as a recipe
    big.write_text('{"deepspeed": "' + "x" * (1 << 20) + '"}')
    assert requested(str(plain), f"dataset_name={big}") == (False, False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` sets for a DeepSpeed config
    assert requested(str(plain)) == (True, False)


def write_json(path: Path, data: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / ("adapter_config.json" if "base_model_name_or_path" in data else "config.json")).write_text(json.dumps(data))
    return path


def test_4bit_stays_for_quantization_or_a_model_that_may_be_saved_quantized(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from zephyr.optional_imports import bitsandbytes_requested as requested
    from zephyr.optional_imports import read_request

    def bitsandbytes_requested(argv: list[str]) -> bool:
        return requested(read_request(argv)[1])

    plain = write_json(tmp_path / "plain", {"model_type": "mistral"})
    quantized = write_json(tmp_path / "quantized", {"quantization_config": {"quant_method": "bitsandbytes"}})
    adapter = write_json(tmp_path / "adapter", {"base_model_name_or_path": str(quantized)})
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"model_name_or_path: {plain}\nload_in_4bit: false\ndataset_mixture:\n"
                      f"  datasets:\n    - id: {tmp_path}\n")
    args = [str(recipe), "--load_in_8bit", "false", "optim=adamw_torch", "--dry-run"]
    assert not bitsandbytes_requested(args)
    for extra in (["--load_in_4bit"], ["load_in_8bit=true"], ["--bnb_4bit_quant_type", "nf4"],
                  ["optim=adamw_bnb_8bit"], ["--optim", "paged_adamw_32bit"], [f"model_name_or_path={quantized}"],
                  [f"--ref_model={adapter}"], ["model_name_or_path=unsloth/zephyr-sft-bnb-4bit"]):
        assert bitsandbytes_requested(args + extra), extra
    recipe.write_text(recipe.read_text() + "load_in_4bit: true\n")  # the same key twice: YAML keeps the last
    assert bitsandbytes_requested([str(recipe)])

    # A hub name: its config in the local cache decides; not cached (or pinned to another revision) is unknown
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert bitsandbytes_requested(["model_name_or_path=org/model"])
    snapshot = cache / "models--org--model" / "snapshots" / "abc"
    write_json(snapshot, {"model_type": "mistral"})
    (cache / "models--org--model" / "refs").mkdir()
    (cache / "models--org--model" / "refs" / "main").write_text("abc")
    assert not bitsandbytes_requested(["model_name_or_path=org/model"])
    assert bitsandbytes_requested(["model_name_or_path=org/model", "model_revision=v2"])
    write_json(snapshot, {"quantization_config": {"quant_method": "bitsandbytes"}})
    assert bitsandbytes_requested(["model_name_or_path=org/model"])


def test_a_stage_process_leaves_out_what_it_does_not_use_and_the_libraries_see_it_absent(tiny_dir):
    """The contract zephyr/optional_imports.py relies on: accelerate, transformers, TRL and peft read a None entry in
    sys.modules as "not installed"; accelerate's model unwrapping, model loading and LoRA then work without them."""
    code = ("import logging, sys\n"
            "from zephyr.logs import configure_logging\n"
            "from zephyr.optional_imports import leave_out_unused_libraries\n"
            "configure_logging(logging.INFO)\n"
            f"leave_out_unused_libraries(['model_name_or_path={tiny_dir / 'model'}'])\n"
            "import accelerate.utils as au, transformers, transformers.integrations as ti, trl.import_utils as tu\n"
            "import peft, peft.import_utils as pu, transformers.utils.import_utils as tiu\n"
            "from trl import DPOTrainer\n"
            f"model = transformers.AutoModelForCausalLM.from_pretrained('{tiny_dir / 'model'}')\n"
            "assert au.extract_model_from_parallel(model) is model\n"
            "lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=['q_proj']))\n"
            "assert lora.print_trainable_parameters() is None\n"
            "print(*(bool(f()) for f in (au.is_deepspeed_available, ti.is_deepspeed_available,"
            " tu.is_deepspeed_available, tiu.is_bitsandbytes_available, pu.is_bnb_available,"
            " au.is_bnb_available, ti.is_wandb_available)), *(sys.modules[m] for m in ('deepspeed', 'bitsandbytes',"
            " 'wandb')))\n")
    env = {**os.environ, "ACCELERATE_USE_DEEPSPEED": "false"}
    env.pop("ZEPHYR_IMPORT_ALL", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-10:] == ["False"] * 7 + ["None"] * 3
    assert "real_accelerator" not in proc.stderr  # DeepSpeed's import notice
    assert "not loading bitsandbytes, deepspeed, wandb: this run does not use them" in proc.stdout

    # ZEPHYR_IMPORT_ALL=1 keeps both; a call from Python (zephyr.cli.main with a list) must not change what the
    # calling process can import (the stage itself is a stand-in here: what matters is what main does before it)
    keep = ("import os, sys\nimport zephyr.cli as cli\nfrom zephyr.optional_imports import leave_out_unused_libraries\n"
            "os.environ['ZEPHYR_IMPORT_ALL'] = '1'\nleave_out_unused_libraries([])\n"
            "print(*(m in sys.modules for m in ('deepspeed', 'bitsandbytes')))\n"
            "del os.environ['ZEPHYR_IMPORT_ALL']\ncli.COMMANDS['eval'] = (lambda argv: 0, 'a stand-in')\n"
            "assert cli.main(['eval', 'recipe.yaml']) == 0\n"
            "print(*(m in sys.modules for m in ('deepspeed', 'bitsandbytes')))\n")
    proc = subprocess.run([sys.executable, "-c", keep], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-4:] == ["False"] * 4, proc.stdout  # neither marked absent


def test_an_orchestrator_checks_4bit_recipes_without_bitsandbytes(tmp_path):
    """`zephyr run` loads no model itself (its stages are processes of their own): bitsandbytes is left out even
    for QLoRA stages, whose recipes it still resolves and checks."""
    recipes = REPO / "recipes" / "zephyr-7b-beta"
    (tmp_path / "pipeline.yaml").write_text(
        f"root: {tmp_path / 'root'}\nstages:\n  sft:\n    recipe: {recipes / 'sft' / 'config_qlora.yaml'}\n"
        f"    overrides:\n      output_dir: ${{root}}/sft\n"
        f"  dpo:\n    recipe: {recipes / 'dpo' / 'config_qlora.yaml'}\n    overrides:\n"
        f"      model_name_or_path: ${{root}}/sft\n")
    proc = zephyr("run", str(tmp_path / "pipeline.yaml"), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "not loading bitsandbytes: this run does not use it" in proc.stdout
    assert "4-bit" in proc.stdout and "[sft] to run" in proc.stdout and "[dpo] to run" in proc.stdout


@pytest.mark.parametrize("command", ["sft", "dpo", "aif", "eval"])
def test_a_stage_with_no_argument_prints_its_usage(capsys, command):
    from zephyr.cli import main

    assert main([command]) == 2
    assert capsys.readouterr().err.strip() == (f"zephyr: error: no recipe given. usage: zephyr {command} RECIPE.yaml "
                                               f"[--key value ...]; see `zephyr {command} --help` for every key")


def test_a_stage_without_its_required_keys_says_which(capsys):
    from zephyr.cli import main

    assert main(["aif", "--max_failure_rate", "0.1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "zephyr: error: command line: missing required key(s) prompts, generators, judge, output_dir "
        "(see `zephyr aif --help` for every key)")


EXIT = """
import atexit, sys, threading, time
class Teardown:
    def __del__(self):  # runs when the interpreter tears down this module
        print("interpreter teardown", flush=True)
keep = Teardown()
from zephyr.cli import main
how = sys.argv.pop(1)
code = main(None if how == "whole" else sys.argv[1:])  # None: a whole zephyr process (sys.argv[1:])
threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined", flush=True))).start()
atexit.register(lambda: print("exit handler", flush=True))
sys.exit(code)
"""


@pytest.mark.parametrize(("args", "code"), [(["--version"], 0), (["nosuchcommand"], 2), (["report", "--bogus"], 2)])
def test_a_zephyr_process_ends_after_its_threads_and_exit_handlers_without_interpreter_teardown(args, code):
    """A whole zephyr process skips the interpreter teardown (zephyr/launch.py: exit_without_teardown): in a rank of
    a launch (WORLD_SIZE 2), a gloo thread still releasing the last collective aborts it there, and everywhere it is
    about 1 CPU-s. Its exit code, the joining of its threads and its exit handlers stay Python's. A call from Python
    changes nothing of the caller's exit."""
    returned = args[0] != "report"  # argparse's SystemExit leaves main before the script goes on
    cases = [("whole", "2", 0), ("whole", "1", 0)] + ([("call", "1", 1)] if code == 0 else [])
    for how, world_size, teardown in cases:
        proc = subprocess.run([sys.executable, "-c", EXIT, how, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "WORLD_SIZE": world_size})
        assert proc.returncode == code, proc.stderr[-2000:]
        lines = proc.stdout.splitlines()
        assert lines.count("interpreter teardown") == teardown, (how, world_size, lines)
        assert lines.count("thread joined") == lines.count("exit handler") == returned, (how, world_size, lines)
