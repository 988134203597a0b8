"""TRL's fused LM head, made fast on CPU: only the labelled positions, and zephyr's CPU kernel.

TRL 1.16's fused LM head (`add_fused_lm_head`) projects only the positions whose label is not -100, but only on
devices where it runs Triton kernels (CUDA, XPU): elsewhere it scores every position and zeroes the masked ones,
so that an XLA device (e.g. Neuron) does not recompile for every count of labelled positions. On CPU that rule
costs the 32k-vocabulary projection of every prompt and padding position. The choice is made by
`trl.trainer.utils._use_triton`, read at each call; `labelled_positions_only()` answers "yes" for devices that
compile nothing per shape.

The projection itself is `trl.trainer.utils._ChunkedLogProbFunction`, also read at each call: on CPU its torch
fallback is several times slower than the matmuls it wraps (zephyr/lm_head_cpu.py says why).
`cpu_log_prob_kernel()` puts zephyr's kernel (same contract, same results) in its place for CPU tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from zephyr.hooks.registry import PrivateHook, declare, used
from zephyr.lm_head_cpu import CPULogProb

USE_TRITON = declare(PrivateHook(
    "trl.trainer.utils", "_use_triton", "patch", ("device",),
    "the fused LM head asks it whether to project only the labelled positions; no public setting does"))
CHUNKED_LOGPROB = declare(PrivateHook(
    "trl.trainer.utils", "_ChunkedLogProbFunction", "patch", None,
    "the fused LM head's projection + log-softmax, looked up at each call; no public setting picks another"))

EAGER_DEVICES = ("cpu", "cuda", "xpu", "mps")  # run each op as it comes: a new shape recompiles nothing


@contextlib.contextmanager
def _swapped(name: str, replacement: Any) -> Iterator[None]:
    from trl.trainer import utils

    original = getattr(utils, name)
    setattr(utils, name, replacement(original))
    try:
        yield
    finally:
        setattr(utils, name, original)


def labelled_positions_only() -> contextlib.AbstractContextManager:
    """Inside the block, TRL's fused LM head projects only positions with a label, on CPU too. The log-probs are
    the same (each position's row of the projection does not depend on the others); only masked work is skipped."""

    def replacement(original):
        def compact(device: torch.device) -> bool:
            used(USE_TRITON)
            return device.type in EAGER_DEVICES or original(device)
        return compact

    return _swapped(USE_TRITON.name, replacement)


class _CPUDispatch:
    """Stands in for TRL's ChunkedLogProbFunction: zephyr's kernel for CPU tensors, TRL's for the rest."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def apply(self, hidden: torch.Tensor, *args: Any) -> Any:
        used(CHUNKED_LOGPROB)
        return (CPULogProb if hidden.device.type == "cpu" else self.original).apply(hidden, *args)


def cpu_log_prob_kernel() -> contextlib.AbstractContextManager:
    """Inside the block, TRL's fused LM head runs zephyr's CPU kernel on CPU tensors (and its own elsewhere). The
    autograd graph keeps the kernel it was built with, so the backward may run after the block."""
    return _swapped(CHUNKED_LOGPROB.name, _CPUDispatch)


def fast_lm_head(args: Any) -> contextlib.ExitStack:
    """The LM head settings of a zephyr training config (`lm_head_labels_only`, `cpu_log_prob_kernel`), as one
    context for a trainer's compute_loss."""
    stack = contextlib.ExitStack()
    if args.lm_head_labels_only:
        stack.enter_context(labelled_positions_only())
    if args.cpu_log_prob_kernel:
        stack.enter_context(cpu_log_prob_kernel())
    return stack
