"""Reward model: a one-output score head on the model, trained on preference pairs so that the chosen answer
scores above the rejected one (TRL's RewardTrainer). Reports eval_accuracy (how often the chosen answer scores
strictly higher) on the eval pairs; the saved model is a sequence-classification model."""

from __future__ import annotations

import logging

from transformers import set_seed
from trl import RewardTrainer

from zephyr.configs import DataArguments, ModelArguments
from zephyr.hooks import RM_EXTREMES, RM_WEIGHTS, WeightedMetrics
from zephyr.preference_configs import ZephyrRewardConfig
from zephyr.stages.common import train_stage
from zephyr.stages.preference import PairLengthGrouping, build_preference_trainer
from zephyr.stages.reliability import ReliableTrainerMixin

logger = logging.getLogger("zephyr")

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrRewardConfig)


class ZephyrRewardTrainer(PairLengthGrouping, ReliableTrainerMixin, WeightedMetrics, RewardTrainer):
    """TRL's RewardTrainer with clean stops, a non-finite guard, atomic checkpoints and exact resume
    (zephyr/stages/reliability.py); its metrics are means over pairs and rows, its min and max those of the whole
    window (zephyr/hooks/metrics.py)."""

    metric_weights = RM_WEIGHTS
    metric_extremes = RM_EXTREMES
    PAIR_COLUMNS = ("chosen_ids", "rejected_ids")  # prompt included


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrRewardConfig):
    if data_args.long_rows == "truncate":
        # RewardTrainer drops pairs longer than max_length instead of cutting them: drop them here, counted
        logger.warning("long_rows: truncate: the reward model's trainer cannot truncate pairs; pairs longer than "
                       "max_length=%s are dropped (and counted) instead", training_args.max_length)
        data_args.long_rows = "drop"
    # The score head starts random: seeded here, so that the same seed gives the same head however the trainer is
    # built (TRL seeds only when it loads the model itself).
    set_seed(training_args.seed)
    return build_preference_trainer(ZephyrRewardTrainer, model_args, data_args, training_args, reward_head=True)


def main(argv: list[str]) -> dict:
    return train_stage(argv, "rm", CONFIG_CLASSES, build_trainer)
