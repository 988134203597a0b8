"""Evaluation: `zephyr eval RECIPE.yaml [overrides]` (see zephyr/evaluation)."""

from __future__ import annotations

import logging
import sys

from zephyr.evaluation.config import EvalConfig
from zephyr.evaluation.runner import run_eval
from zephyr.stages.common import parse_stage_args


def main(argv: list[str]) -> dict:
    (cfg,) = parse_stage_args(argv, (EvalConfig,), "eval")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, level=logging.INFO, force=True)
    return run_eval(cfg)
