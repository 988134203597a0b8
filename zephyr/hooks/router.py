"""The MoE load-balancing loss of TRL's fused LM head, counted over the tokens the padded batch has.

With `output_router_logits`, TRL's fused forward computes the auxiliary loss with transformers' Mixtral
`load_balancing_loss_func` (looked up at each call), weighting tokens by the `attention_mask` it was given. A
packed layout gives it none (plain packing: every row-padding token would count) or a 4D mask (the shared prompt:
the function fails on its shape). `router_token_weights` hands the function the packed layout's own weights
instead: 1 per real token and 0 for row padding, and 2 for each shared prompt token, which the padded batch holds
twice. The function averages its per-token terms with these weights, so the loss, and its gradient, are the
padded batch's.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch

from zephyr.hooks.registry import PrivateHook, declare, used

LOAD_BALANCING = declare(PrivateHook(
    "transformers.models.mixtral.modeling_mixtral", "load_balancing_loss_func", "patch",
    ("gate_logits", "num_experts", "top_k", "attention_mask"),
    "TRL's fused LM head imports it at each call and passes it the forward's attention_mask, which a packed "
    "layout does not have as a per-token weight; no public setting gives the weights"))


@contextlib.contextmanager
def router_token_weights(weights: torch.Tensor) -> Iterator[None]:
    """Inside the block, the load-balancing loss weights the tokens of the packed rows by `weights` (rows, width)
    whatever attention mask it is passed."""
    module = importlib.import_module(LOAD_BALANCING.owner)
    original = getattr(module, LOAD_BALANCING.name)

    def weighted(gate_logits, num_experts=None, top_k=2, attention_mask=None):
        used(LOAD_BALANCING)
        return original(gate_logits, num_experts, top_k, weights)

    setattr(module, LOAD_BALANCING.name, weighted)
    try:
        yield
    finally:
        setattr(module, LOAD_BALANCING.name, original)
