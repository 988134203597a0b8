"""`zephyr report`: PNG panels of a run's curves, for hand-made and real trainer states."""

from __future__ import annotations

import json

import pytest
from helpers import stage_configs

from zephyr import cli
from zephyr.report import report
from zephyr.stages import dpo

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(folder, metrics):
    folder.mkdir(parents=True)
    history = [{"step": s, **{m: 0.1 * s for m in metrics}} for s in (1, 2, 3)]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    return folder


def test_panels_follow_the_metrics_a_run_logged(tmp_path):
    sft = fake_run(tmp_path / "runs" / "sft", ["loss", "eval_loss"])
    fake_run(tmp_path / "runs" / "dpo", ["loss", "rewards/chosen", "eval_rewards/rejected", "rewards/margins",
                                         "eval_rewards/accuracies"])
    made = report(tmp_path / "runs")  # a folder of runs: each gets its report
    assert made == {
        str(tmp_path / "runs" / "dpo" / "report" / "curves.png"): ["loss", "rewards", "reward margin",
                                                                   "reward accuracy"],
        str(tmp_path / "runs" / "sft" / "report" / "curves.png"): ["loss"],
    }
    assert (sft / "report" / "curves.png").read_bytes()[:8] == PNG


def test_report_of_a_real_dpo_run_finds_trl_metric_names(tiny_dir, tmp_path):
    configs = stage_configs("dpo", tiny_dir, tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2)
    trainer, _, _ = dpo.build_trainer(*configs)
    trainer.train()
    trainer.save_state()
    out = configs[2].output_dir
    (png, panels), = report(out).items()
    assert panels == ["loss", "rewards", "reward margin", "reward accuracy"]
    assert open(png, "rb").read()[:8] == PNG


def test_no_run_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no training run here" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        report(tmp_path)
