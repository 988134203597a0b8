"""Every DPO loss type with a closed form at step 0 gives exactly that value.

At step 0 the policy is the reference, so every log-ratio is 0 and each TRL loss reduces to a number that depends
only on beta and label_smoothing. A loss computed on misaligned reference log-probs, a wrong sign or a dropped
term moves it by far more than fp32 rounding does."""

from __future__ import annotations

import math

import pytest
from helpers import stage_configs

from zephyr.stages import dpo

BETA, EPS = 0.25, 0.1  # beta and label_smoothing: the distinct closed forms below are then >= 0.15 apart

CLOSED_FORMS = {  # loss type -> its value when every log-ratio is 0 (TRL 1.16's formulas)
    "sigmoid": math.log(2),  # -log sigmoid(0); label_smoothing does not enter the sigmoid loss
    "hinge": 1.0,  # relu(1 - beta * 0)
    "ipo": (1 / (2 * BETA)) ** 2,  # (0 - 1/(2 beta))^2
    "exo_pair": -math.log(2) - 0.5 * math.log(EPS * (1 - EPS)),  # 1/2 (log 1/2 - log(1-eps)) + 1/2 (log 1/2 - log eps)
    "nca_pair": 2 * math.log(2),  # -log s(0) - 1/2 log s(0) - 1/2 log s(0)
    "robust": math.log(2),  # ((1-eps) ln 2 - eps ln 2) / (1 - 2 eps)
    "bco_pair": 2 * math.log(2),  # -log s(0) - log s(0)
    "sppo_hard": 2 * (0.5 / BETA) ** 2,  # (0 - 1/(2 beta))^2 + (0 + 1/(2 beta))^2
    "aot": math.log(2),  # sorted log-ratio gaps are all 0
    "aot_unpaired": math.log(2),
    "apo_zero": 1.0,  # (1 - s(0)) + s(0)
    "apo_down": 1.0,  # s(0) + (1 - s(0))
    "discopop": 0.5 * math.log(2) + 0.5,  # logistic ln 2 and exponential e^0, mixed half and half by s(0/tau)
    "sigmoid_norm": math.log(2),
}


@pytest.fixture(scope="module")
def step0_trainer(tiny_dir, tmp_path_factory):
    configs = stage_configs("dpo", tiny_dir, tmp_path_factory.mktemp("step0"), beta=BETA, label_smoothing=EPS,
                            loss_type=["exo_pair"], precompute_ref_log_probs=True)
    trainer, _, _ = dpo.build_trainer(*configs)
    return trainer


@pytest.mark.parametrize("loss_type", sorted(CLOSED_FORMS))
def test_step0_loss_matches_its_closed_form(step0_trainer, loss_type):
    # One trainer (its reference log-probs computed once) evaluated under each loss: TRL reads the loss list at
    # every step, and its constructor checks (exo_pair needs label_smoothing > 0) were passed by the build above.
    step0_trainer.loss_types, step0_trainer.loss_weights = [loss_type], [1.0]
    metrics = step0_trainer.evaluate()
    # The log-ratios are 0 up to fp32 rounding of sums of ~100 token log-probs (about 1e-5 at most); every loss
    # here moves by at most 1/beta^2 = 16 per unit of log-ratio, so 1e-3 is above rounding and far below a bug.
    assert abs(metrics["eval_rewards/margins"]) < 1e-5
    assert metrics["eval_loss"] == pytest.approx(CLOSED_FORMS[loss_type], abs=1e-3)
