"""Evaluation: `zephyr eval RECIPE.yaml [overrides]` (see zephyr/evaluation)."""

from __future__ import annotations

from zephyr.evaluation.config import EvalConfig
from zephyr.evaluation.runner import run_eval
from zephyr.stages.common import parse_stage_args


def main(argv: list[str]) -> dict:
    (cfg,) = parse_stage_args(argv, (EvalConfig,), "eval")
    return run_eval(cfg)
