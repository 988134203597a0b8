"""One table of stages (zephyr/stages/__init__.py): a stage added to it, with its module, is a command with its
summary in `zephyr --help`, has its keys in `zephyr STAGE --help`, runs and plans (`--dry-run`), takes its place in
a pipeline, and is a stage a sweep may run. The new stage is registered in a fresh process before zephyr's other
modules load, as a new entry in the table would be."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TOY_MODULE = '''
"""A stand-in training stage: dSFT's configs, and a main that says what it was given."""
from zephyr.stages.sft import CONFIG_CLASSES


def main(argv):
    print("TOY RAN " + " ".join(argv))
    return 0
'''

PROBE = '''
import json, sys
from zephyr.stages import STAGES, Stage

STAGES["toy"] = Stage("toy", "toy stage", "training", "toy_stage", "toy_stage:CONFIG_CLASSES",
                      "toy: a stage added in one entry")
from zephyr import cli
from zephyr.pipeline import STAGES as ORDER
from zephyr.sweep import SweepConfig
from zephyr.recipe import build_configs

(sweep,) = build_configs({"base": "b.yaml", "stage": "toy", "output_dir": "o", "space": {"learning_rate":
                          {"choices": [1e-5]}}, "objective": {"metric": "eval_loss"}}, (SweepConfig,), source="s.yaml")
print("PROBE " + json.dumps({"usage": cli.usage(), "order": list(ORDER), "sweep_stage": sweep.stage,
                             "launchable": list(cli.LAUNCHABLE), "plannable": list(cli.PLANNABLE)}))
sys.exit(cli.main(sys.argv[1:]))
'''


def run_probe(tmp_path: Path, *argv: str) -> tuple[dict, str]:
    (tmp_path / "toy_stage.py").write_text(TOY_MODULE)
    (tmp_path / "probe.py").write_text(PROBE)
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin",
                                                       "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line[6:]), proc.stdout


def test_a_stage_added_to_the_table_is_everywhere(tiny_dir, tmp_path):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        model_name_or_path: {tiny_dir / 'model'}
        dataset_name: {tiny_dir / 'data' / 'sft'}
        dataset_train_split: train_sft
        dataset_test_split: test_sft
        output_dir: {tmp_path / 'toy_out'}
        """))
    # the command table and --help, the launcher's and planner's lists, the pipeline order, sweeps
    facts, out = run_probe(tmp_path, "toy", "--help")
    assert "  toy          toy: a stage added in one entry" in facts["usage"]
    assert facts["order"][-1] == "toy" and facts["sweep_stage"] == "toy"
    assert "toy" in facts["launchable"] and "toy" in facts["plannable"]
    assert "usage: zephyr toy RECIPE.yaml [overrides] [--accelerate-config CFG] [--dry-run]" in out
    assert "--learning_rate" in out and "--dataset_name" in out  # its keys, from its config classes
    # it runs: the command calls its main with the arguments
    _, out = run_probe(tmp_path, "toy", str(recipe), "learning_rate=1e-5")
    assert f"TOY RAN {recipe} learning_rate=1e-5" in out
    # it plans: the recipe resolved through its config classes, without running it
    _, out = run_probe(tmp_path, "toy", str(recipe), "--dry-run")
    assert "TOY RAN" not in out and "toy" in out and "toy_out" in out
    # a typo in its recipe is caught by the plan like any stage's
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), "toy", str(recipe), "learnin_rate=1",
                           "--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "learnin_rate" in proc.stderr
