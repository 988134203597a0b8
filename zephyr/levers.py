"""Which forward layout of a preference batch is exact for the loaded model, decided from its config.

The packed layouts (zephyr/packing.py) give the padded forward's log-probs only when the model's token mixing is
attention under a mask zephyr controls. What breaks that, and what is done instead:

- a layer that mixes tokens without attention (LFM2's short convolutions, Qwen3-Next's linear attention, Mamba
  layers) lets one packed sequence see another whatever the mask says: padded batches;
- a layer type zephyr has no mask for (chunked attention): padded batches;
- sliding-window layers: the window is folded into each layer type's mask (a dict of masks for models that take
  one per layer type), so they stay exact at any length;
- flex attention: zephyr hands it the same relation as a block mask (document boundaries, the shared prompt and
  the window in one mask function), so both packed layouts run under it;
- an attention kernel that takes no custom mask (FlashAttention): the shared prompt falls back to plain packing,
  which such kernels run from the position ids;
- a model whose own mask builder ignores the position ids (gpt-oss): nothing to do, since with sdpa and eager
  zephyr hands every packed layout its own masks;
- the MoE load-balancing loss: counted over real tokens only, each shared prompt token twice (as the padded batch
  has it), see zephyr/hooks/router.py.

`choose_layout` returns the layout with every fallback as one line naming the lever, the model type and the
reason; the trainer logs them once and writes them to all_results.json, and `--dry-run` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

MASKED_KERNELS = ("sdpa", "eager", "flex_attention")  # kernels that take a custom mask (flex: a BlockMask)
ATTENTION_TYPES = ("full_attention", "sliding_attention")  # layer types zephyr builds masks for
PER_TOKEN_TYPES = ("mlp", "moe")  # layers without token mixing (Nemotron-H lists them as layer types)
# config keys that mark recurrent or convolutional token mixing in models that list no layer types
RECURRENT_KEYS = ("mamba", "ssm_state_size", "conv_kernel", "linear_num_key_heads", "attn_layer_period")


@dataclass(frozen=True)
class AttentionMasks:
    """How packed layouts hand their attention to the model: one mask per layer type, its window folded in."""

    windows: dict[str, int | None]  # layer type -> sliding window (None: full attention)
    per_layer_type: bool  # the model takes {layer type: mask} (its config lists `layer_types`)
    form: Literal["bool", "additive", "block"]  # sdpa: True may attend; eager: added to the scores; flex: BlockMask


@dataclass
class LayoutChoice:
    layout: Literal["padded", "packed", "shared_prompt"]
    masks: AttentionMasks | None  # None: the model builds the masks from the position ids (plain packing only)
    fallbacks: list[str] = field(default_factory=list)  # one line per lever that could not be used as asked

    def record(self) -> dict[str, Any]:
        """What all_results.json keeps of the choice."""
        return {"forward_layout": self.layout, "forward_layout_fallbacks": self.fallbacks}


def attention_layer_types(config: Any) -> list[str]:
    """Each decoder layer's kind, as transformers' `layer_types` names them; models that list none are all
    sliding-window (their `sliding_window` is set: Mistral, Mixtral, Phi-3...) or all full attention."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    mixing = sorted(key for key in config.to_dict() if any(mark in key for mark in RECURRENT_KEYS))
    if mixing:
        return [f"recurrent ({mixing[0]})"]
    kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
    return [kind] * getattr(config, "num_hidden_layers", 1)


def choose_layout(config: Any, packed_forward: bool, share_prompt: bool, kernel: str | None) -> LayoutChoice:
    """The exact layout closest to what the recipe asks (`packed_forward`, `share_prompt`) for a model with this
    config and attention kernel."""
    if not packed_forward:
        return LayoutChoice("padded", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", "?")
    types = attention_layer_types(text)
    other = sorted(set(types) - set(ATTENTION_TYPES) - set(PER_TOKEN_TYPES))
    asked = "share_prompt" if share_prompt else "packed_forward"
    if other:
        kind = other[0]
        why = ("zephyr builds no packed mask for it" if kind.endswith("attention") and kind != "linear_attention"
               else "mixes tokens along a packed row whatever the attention mask")
        return LayoutChoice("padded", None, [f"{asked}: off for {model_type}: its layer type {kind!r} {why}; padded "
                                             "batches"])
    if kernel not in MASKED_KERNELS:
        if not share_prompt:
            return LayoutChoice("packed", None)
        return LayoutChoice("packed", None, [
            f"share_prompt: off for {model_type}: attention kernel {kernel} takes no custom mask; plain packing"])
    window = getattr(text, "sliding_window", None)
    windows = {kind: (window if kind == "sliding_attention" else None) for kind in dict.fromkeys(types)
               if kind in ATTENTION_TYPES}
    form = {"eager": "additive", "flex_attention": "block"}.get(kernel, "bool")
    masks = AttentionMasks(windows, bool(getattr(text, "layer_types", None)), form)
    return LayoutChoice("shared_prompt" if share_prompt else "packed", masks)
