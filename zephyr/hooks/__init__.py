"""Everything zephyr does through private names of transformers and TRL, in one package (datasets and Optuna
are used through their public APIs only).

A library renaming a private name breaks nothing loudly: an override stops being called. So every such use lives
here, declared in `registry.HOOKS` with why the public API is not enough, and `tests/test_hooks.py` pins each one
against the installed libraries, naming the hook that broke.

- `registry`: the declarations, and a call counter for the contract tests.
- `trainer`: the training loop (gradient norm, training sampler, TRL's token count).
- `checkpoint`: checkpoint saving and its Hub upload (staged, atomic checkpoints).
- `reference`: TRL's cache of precomputed reference log-probs (its key and weights hash), and the ZeRO-3 engine
  of its reference pass.
- `lm_head`: TRL's fused LM head on CPU: only labelled positions, and zephyr's kernel (zephyr/lm_head_cpu.py).
- `metrics`: TRL's logged metrics as means over the pairs, rows or tokens they describe, not over batches.
- `router`: the MoE load-balancing loss of a packed forward, over the padded batch's tokens.

Upgrading transformers or TRL: run `pytest tests/test_hooks.py` first, and re-read `REFERENCE_NEUTRAL_FIELDS`.
"""

from zephyr.hooks.checkpoint import CheckpointHooks
from zephyr.hooks.lm_head import cpu_log_prob_kernel, fast_lm_head, labelled_positions_only
from zephyr.hooks.metrics import (
    CPO_WEIGHTS,
    DPO_WEIGHTS,
    KTO_WEIGHTS,
    ORPO_WEIGHTS,
    RM_EXTREMES,
    RM_WEIGHTS,
    SFT_WEIGHTS,
    WeightedMetrics,
    WeightedOddsMetrics,
)
from zephyr.hooks.reference import (
    REFERENCE_NEUTRAL_FIELDS,
    KTOReferencePassHooks,
    ReferencePassHooks,
    attn_implementation,
    fast_module_hash,
    model_identity,
    reference_pass_settings,
    trl_reference_hash,
)
from zephyr.hooks.registry import HOOKS, PrivateHook, recording
from zephyr.hooks.trainer import TrainerHooks

__all__ = [
    "HOOKS",
    "REFERENCE_NEUTRAL_FIELDS",
    "CheckpointHooks",
    "KTOReferencePassHooks",
    "CPO_WEIGHTS",
    "DPO_WEIGHTS",
    "KTO_WEIGHTS",
    "ORPO_WEIGHTS",
    "RM_EXTREMES",
    "RM_WEIGHTS",
    "SFT_WEIGHTS",
    "WeightedMetrics",
    "WeightedOddsMetrics",
    "PrivateHook",
    "ReferencePassHooks",
    "TrainerHooks",
    "attn_implementation",
    "cpu_log_prob_kernel",
    "fast_lm_head",
    "fast_module_hash",
    "labelled_positions_only",
    "model_identity",
    "recording",
    "reference_pass_settings",
    "trl_reference_hash",
]
