"""SimPO: reference-free, length-normalised preference optimization (TRL's experimental CPOTrainer with
loss_type simpo and no NLL term). The loss is -log sigmoid(beta * (mean token log-prob of chosen - of rejected) -
simpo_gamma): no reference model, no reference pass. The same command runs CPO's other losses (loss_type sigmoid,
hinge or ipo; cpo_alpha 1.0 adds CPO's NLL term on the chosen answers)."""

from __future__ import annotations

from zephyr.configs import DataArguments, ModelArguments
from zephyr.hooks import CPO_WEIGHTS
from zephyr.preference_configs import ZephyrSimPOConfig
from zephyr.stages.common import train_stage
from zephyr.stages.preference import ReliablePairTrainer, build_preference_trainer
from zephyr.trl_experimental import CPOTrainer

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrSimPOConfig)


class ZephyrCPOTrainer(ReliablePairTrainer, CPOTrainer):
    """TRL's CPOTrainer, made safe to stop and resume (ReliablePairTrainer), its metrics means over pairs and
    tokens, not over batches (zephyr/hooks/metrics.py)."""

    metric_weights = CPO_WEIGHTS


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrSimPOConfig):
    return build_preference_trainer(ZephyrCPOTrainer, model_args, data_args, training_args)


def main(argv: list[str]) -> dict:
    return train_stage(argv, "simpo", CONFIG_CLASSES, build_trainer)
