"""ORPO: preference optimization from the base model, with no reference model and no dSFT stage (TRL's
experimental ORPOTrainer). One loss does both jobs: the NLL of the chosen answer (supervised fine-tuning) plus beta
times -log sigmoid(log odds(chosen) - log odds(rejected)), each answer's odds taken from its mean token log-prob."""

from __future__ import annotations

from zephyr.configs import DataArguments, ModelArguments
from zephyr.hooks import ORPO_WEIGHTS
from zephyr.preference_configs import ZephyrORPOConfig
from zephyr.stages.common import train_stage
from zephyr.stages.preference import ReliablePairTrainer, build_preference_trainer
from zephyr.trl_experimental import ORPOTrainer

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrORPOConfig)


class ZephyrORPOTrainer(ReliablePairTrainer, ORPOTrainer):
    """TRL's ORPOTrainer, made safe to stop and resume (ReliablePairTrainer), its metrics means over pairs and
    tokens, not over batches (zephyr/hooks/metrics.py)."""

    metric_weights = ORPO_WEIGHTS


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrORPOConfig):
    return build_preference_trainer(ZephyrORPOTrainer, model_args, data_args, training_args)


def main(argv: list[str]) -> dict:
    return train_stage(argv, "orpo", CONFIG_CLASSES, build_trainer)
