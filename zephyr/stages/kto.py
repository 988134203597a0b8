"""KTO: alignment from answers marked desirable or undesirable, no pairs needed (TRL's KTOTrainer), against the
frozen model training starts from. Rows come in TRL's unpaired format (prompt, completion, label) or as
preference pairs, each split into a desirable (chosen) and an undesirable (rejected) row: AIF output and
ultrafeedback_binarized work as they are."""

from __future__ import annotations

from trl import KTOTrainer

from zephyr.configs import DataArguments, ModelArguments
from zephyr.hooks import KTO_WEIGHTS, KTOReferencePassHooks, WeightedMetrics, fast_lm_head, trl_reference_hash
from zephyr.preference_configs import ZephyrKTOConfig
from zephyr.stages.common import train_stage
from zephyr.stages.preference import build_preference_trainer, load_reference
from zephyr.stages.reliability import ReliableTrainerMixin

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrKTOConfig)


class ZephyrKTOTrainer(ReliableTrainerMixin, KTOReferencePassHooks, WeightedMetrics, KTOTrainer):
    """TRL's KTOTrainer with clean stops, a non-finite guard, atomic checkpoints and exact resume
    (zephyr/stages/reliability.py), its fused LM head fast on CPU (zephyr/hooks/lm_head.py), and its cache of
    precomputed reference log-probs keyed with zephyr's fast weights hash instead of a SHA-256 of every weight; its
    metrics are means over rows and tokens, not over batches (zephyr/hooks/metrics.py)."""

    metric_weights = KTO_WEIGHTS
    margin_from_sides = True

    def __init__(self, *args, **kwargs) -> None:
        with trl_reference_hash(trainer="kto_trainer"):
            super().__init__(*args, **kwargs)

    def compute_ref_log_probs(self, model, inputs):
        with fast_lm_head(self.args):
            return super().compute_ref_log_probs(model, inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with fast_lm_head(self.args):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrKTOConfig):
    return build_preference_trainer(ZephyrKTOTrainer, model_args, data_args, training_args, kind="unpaired",
                                    ref_model=load_reference(model_args, training_args.precompute_ref_log_probs))


def main(argv: list[str]) -> dict:
    return train_stage(argv, "kto", CONFIG_CLASSES, build_trainer)
