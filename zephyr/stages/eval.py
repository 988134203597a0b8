"""Evaluation: `zephyr eval RECIPE.yaml [overrides]` (see zephyr/evaluation)."""

from __future__ import annotations

from zephyr.evaluation.config import EvalConfig
from zephyr.evaluation.runner import run_eval
from zephyr.inference.store import parse_shard
from zephyr.recipe import parse_stage_args
from zephyr.run_lock import locked


def main(argv: list[str]) -> dict:
    (cfg,) = parse_stage_args(argv, (EvalConfig,), "eval")
    # one run per output folder; a shard worker writes under the lock of the run that started it
    with locked(cfg.output_dir, enabled=parse_shard(cfg.shard)[1] == 1):
        return run_eval(cfg)
