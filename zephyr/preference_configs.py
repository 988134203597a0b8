"""Configs of the preference stages beyond dDPO: ORPO, SimPO (TRL's CPO trainer), KTO and reward models.

Apart from zephyr/configs.py because TRL 1.16 keeps ORPO and CPO in `trl.experimental`, whose import loads their
trainers too (about a second; zephyr/trl_experimental.py): only these stages pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import KTOConfig, RewardConfig

from zephyr.configs import _FusedLMHeadSettings, _ZephyrTrainingDefaults
from zephyr.trl_experimental import CPOConfig, ORPOConfig


@dataclass
class _PairCollatorColumns:
    """TRL's experimental ORPO and CPO trainers collate the tokenized columns they add themselves; they turn
    remove_unused_columns off with a warning when a config leaves it on, so zephyr's default is off."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every dataset column for the trainer's collator (ORPO and CPO need "
                                 "them)."}
    )


@dataclass
class ZephyrORPOConfig(_ZephyrTrainingDefaults, _PairCollatorColumns, ORPOConfig):
    """TRL's (experimental) ORPOConfig with zephyr's training defaults. ORPO needs no reference model and no dSFT
    stage: its loss is the NLL of the chosen answer plus beta times an odds-ratio term that pushes the chosen
    answer's odds above the rejected one's."""


@dataclass
class ZephyrSimPOConfig(_ZephyrTrainingDefaults, _PairCollatorColumns, CPOConfig):
    """TRL's (experimental) CPOConfig set up as SimPO: reference-free, length-normalised log-probs, a target margin
    gamma, no behaviour-cloning term. Other CPO losses stay one key away (loss_type: sigmoid with cpo_alpha: 1.0 is
    CPO itself)."""

    loss_type: str = field(
        default="simpo",
        metadata={"help": "simpo (average log-probs, margin simpo_gamma), or CPO's sigmoid, hinge, ipo; alphapo is "
                  "simpo with AlphaPO's reward shape (see alpha). sigmoid with cpo_alpha: 1.0 is the CPO paper's loss."},
    )
    beta: float = field(
        default=2.0,
        metadata={"help": "Scale of the reward difference in the loss; the SimPO paper uses 2.0 to 2.5 (CPO: 0.1)."},
    )
    cpo_alpha: float = field(
        default=0.0,
        metadata={"help": "Weight of the NLL (behaviour cloning) term on the chosen answers: 0 for SimPO, 1.0 for "
                  "CPO."},
    )
    simpo_gamma: float | None = field(
        default=None,
        metadata={"help": "gamma, the target reward margin of the simpo loss (TRL's key; the loss is "
                  "-log sigmoid(beta * (avg logp chosen - avg logp rejected) - simpo_gamma)). Default: "
                  "gamma_beta_ratio x beta."},
    )
    gamma_beta_ratio: float = field(
        default=0.5,
        metadata={"help": "The margin as the SimPO paper and its code set it, gamma / beta (0.5 to 0.8 there); "
                  "used when simpo_gamma is not set."},
    )

    def __post_init__(self) -> None:
        if self.simpo_gamma is None:
            self.simpo_gamma = self.gamma_beta_ratio * self.beta
        else:  # the saved recipe then says what was trained
            self.gamma_beta_ratio = self.simpo_gamma / self.beta if self.beta else self.gamma_beta_ratio
        super().__post_init__()


@dataclass
class ZephyrKTOConfig(_ZephyrTrainingDefaults, _FusedLMHeadSettings, KTOConfig):
    """TRL's KTOConfig with zephyr's defaults: the reference (the model training starts from) scores every row once
    before training, so no second model is held or run per step."""

    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Compute the reference log-probs (and those of the KL estimate) once before training "
                  "instead of running the reference model at every step."},
    )


@dataclass
class ZephyrRewardConfig(_ZephyrTrainingDefaults, RewardConfig):
    """TRL's RewardConfig with zephyr's training defaults: a sequence-classification head on the model scores each
    answer; the loss is -log sigmoid(score chosen - score rejected) and eval_accuracy is how often the chosen answer
    scores strictly higher."""
