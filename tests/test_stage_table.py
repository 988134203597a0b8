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
import contextlib, io, json, sys
from zephyr.stages import STAGES, Stage

STAGES["toy"] = Stage("toy", "toy stage", "training", "toy_stage", "toy_stage:CONFIG_CLASSES",
                      "toy: a stage added in one entry")
from zephyr import cli
from zephyr.pipeline import STAGES as ORDER
from zephyr.sweep import SweepConfig
from zephyr.recipe import build_configs

(sweep,) = build_configs({"base": "b.yaml", "stage": "toy", "output_dir": "o", "space": {"learning_rate":
                          {"choices": [1e-5]}}, "objective": {"metric": "eval_loss"}}, (SweepConfig,), source="s.yaml")
runs = []
for argv in json.loads(sys.argv[1]):  # each command line through the CLI, as `zephyr ...` runs it
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    runs.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print("PROBE " + json.dumps({"usage": cli.usage(), "order": list(ORDER), "sweep_stage": sweep.stage,
                             "launchable": list(cli.LAUNCHABLE), "plannable": list(cli.PLANNABLE), "runs": runs}))
'''


def run_probe(tmp_path: Path, commands: list[list[str]]) -> dict:
    """One fresh process: the toy stage registered first, then each command line through `cli.main`."""
    (tmp_path / "toy_stage.py").write_text(TOY_MODULE)
    (tmp_path / "probe.py").write_text(PROBE)
    proc = subprocess.run([sys.executable, str(tmp_path / "probe.py"), json.dumps(commands)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))[6:])


def test_a_stage_added_to_the_table_is_everywhere(tiny_dir, tmp_path):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        model_name_or_path: {tiny_dir / 'model'}
        dataset_name: {tiny_dir / 'data' / 'sft'}
        dataset_train_split: train_sft
        dataset_test_split: test_sft
        output_dir: {tmp_path / 'toy_out'}
        """))
    facts = run_probe(tmp_path, [["toy", "--help"], ["toy", str(recipe), "learning_rate=1e-5"],
                                 ["toy", str(recipe), "--dry-run"], ["toy", str(recipe), "learnin_rate=1", "--dry-run"]])
    helped, ran, planned, typo = facts["runs"]
    # the command table and --help, the launcher's and planner's lists, the pipeline order, sweeps
    assert "  toy          toy: a stage added in one entry" in facts["usage"]
    assert facts["order"][-1] == "toy" and facts["sweep_stage"] == "toy"
    assert "toy" in facts["launchable"] and "toy" in facts["plannable"]
    assert helped["code"] == 0
    assert "usage: zephyr toy RECIPE.yaml [overrides] [--accelerate-config CFG] [--dry-run]" in helped["out"]
    assert "--learning_rate" in helped["out"] and "--dataset_name" in helped["out"]  # its keys, from its configs
    # it runs: the command calls its main with the arguments
    assert ran["code"] == 0 and f"TOY RAN {recipe} learning_rate=1e-5" in ran["out"]
    # it plans: the recipe resolved through its config classes, without running it
    assert planned["code"] == 0 and "TOY RAN" not in planned["out"] and "toy_out" in planned["out"]
    # a typo in its recipe is caught by the plan like any stage's
    assert typo["code"] == 2 and "learnin_rate" in typo["err"]
