"""AIF: build preference data with AI feedback (generate -> judge -> binarize), resumable and crash-safe.

    zephyr aif RECIPE.yaml [overrides] [--shard i/n] [--rebinarize]

--rebinarize rebuilds the dataset from the stored completions and judgments (all shards) without generating
or judging: change `binarization.*` and rerun in seconds.
"""

from __future__ import annotations

import logging

from zephyr.aif.config import AIFConfig
from zephyr.aif.pipeline import Summary, run_aif
from zephyr.inference.store import parse_shard
from zephyr.recipe import parse_stage_args
from zephyr.run_lock import locked

logger = logging.getLogger("zephyr.aif")


def main(argv: list[str]) -> Summary:
    rebinarize = "--rebinarize" in argv
    argv = [a for a in argv if a != "--rebinarize"]
    (cfg,) = parse_stage_args(argv, (AIFConfig,), "aif")
    # one run per output folder; a shard worker writes under the lock of the run that started it
    with locked(cfg.output_dir, enabled=parse_shard(cfg.shard)[1] == 1):
        return run_aif(cfg, rebinarize=rebinarize)
