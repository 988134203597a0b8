"""transformers' Trainer and TRL's trainers: the private names zephyr's training loop needs (zephyr/stages/reliability.py
says what for). Each hook only hands over to a zephyr method with a public name."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset, Sampler

from zephyr.hooks.registry import PrivateHook, declare, private_override, used

logger = logging.getLogger("zephyr")

TRL_TOKEN_COUNT = declare(PrivateHook(
    "trl.SFTTrainer", "_total_train_tokens", "attribute", None,
    "TRL counts the `num_tokens` it logs in this attribute (SFTTrainer and DPOTrainer alike), starting at 0 in "
    "every process and kept in no checkpoint: a resumed run must continue it from the checkpoint's last log."))


class TrainerHooks:
    """Put before the TRL trainer class in the bases (ReliableTrainerMixin does)."""

    def observe_grad_norm(self, grad_norm: Any) -> None:
        """Sees the gradient norm of every optimizer step, before the optimizer uses it."""

    def train_sampler(self, train_dataset: Dataset | None,
                      default: Callable[[Dataset | None], Sampler | None]) -> Sampler | None:
        """The sampler of the training rows; `default(train_dataset)` is the one transformers would use."""
        return default(train_dataset)

    @private_override("transformers.Trainer", why=(
        "The only place the gradient norm of a step exists before the optimizer step: callbacks "
        "(on_pre_optimizer_step) are not given it, and recomputing it would cost a second pass over all "
        "gradients (sharded ones under DeepSpeed/FSDP)."))
    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self.observe_grad_norm(grad_norm)
        return grad_norm

    @private_override("transformers.Trainer", why=(
        "transformers builds the training sampler here; the only public alternative is rebuilding the whole "
        "training DataLoader (accelerate wrapping, workers, resume skipping) in get_train_dataloader."))
    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler(train_dataset, super()._get_train_sampler)

    def continue_token_count(self, tokens: int) -> None:
        """Make TRL's `num_tokens` go on from `tokens` (a resumed run) instead of 0."""
        if not hasattr(self, TRL_TOKEN_COUNT.name):
            logger.warning("this TRL has no %s: num_tokens restarts at 0 after a resume", TRL_TOKEN_COUNT.name)
            return
        used(TRL_TOKEN_COUNT)
        setattr(self, TRL_TOKEN_COUNT.name, tokens)
