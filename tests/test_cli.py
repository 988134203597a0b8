"""The command line a new user meets first: fast --help, every stage's keys under --help, one-line errors."""

from __future__ import annotations

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


@pytest.mark.parametrize("command, keys", [
    ("sft", ["--model_name_or_path", "--dataset_mixture", "--assistant_only_loss", "--learning_rate"]),
    ("dpo", ["--packed_forward", "--precompute_ref_log_probs", "--beta", "--ref_model_name_or_path"]),
    ("aif", ["--prompts.id", "--generators.N.extra_body", "--judge.api_key_env", "--max_failure_rate"]),
    ("eval", ["--questions", "--models.N.model", "--reward_accuracy.policy", "--max_failure_rate"]),
    ("binarize", ["--source", "--binarization.score", "--binarization.rejected"]),
])
def test_every_stage_answers_help_with_its_keys(command, keys):
    proc = zephyr(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: zephyr {command} ")
    for key in keys:
        assert f"\n  {key}  [default: " in proc.stdout, key
    assert "gemm_4bit" not in proc.stderr


def test_a_stage_without_its_required_keys_says_which(tmp_path):
    proc = zephyr("aif", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("zephyr: error: command line: missing required key(s) prompts, generators, judge, "
                                   "output_dir (see `zephyr aif --help` for every key)")
