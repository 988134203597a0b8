"""Padding-free forward for preference batches.

TRL 1.16 switched DPO's `padding_free` off (it warns and pads). With UltraFeedback-like lengths most of a
padded batch is padding: random batches of 8 pairs are about 30% real tokens. Here the real tokens of every
sequence are packed first-fit-decreasing into rows no longer than the batch's longest sequence, each with its
own position ids and a block-causal attention mask of its own (no attention across sequences; sliding windows
folded in), and the per-token outputs are put back where the padded layout has them. The maths is unchanged: the
same log-probs, so the same loss, on fewer computed tokens. Which layout is exact for which model is decided in
zephyr/levers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zephyr.hooks.router import router_token_weights
from zephyr.levers import AttentionMasks, LayoutChoice


@dataclass
class PackPlan:
    rows: int
    width: int
    slots: list[tuple[int, int, int]]  # per original sequence: (packed row, offset, length)


def plan_packing(lengths: list[int], width: int) -> PackPlan:
    """First-fit-decreasing: each sequence into the first row with room, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[int] = []
    slots: list[tuple[int, int, int]] = [(0, 0, 0)] * len(lengths)
    for i in order:
        n = lengths[i]
        row = next((r for r, room in enumerate(free) if room >= n), None)
        if row is None:
            free.append(width)
            row = len(free) - 1
        slots[i] = (row, width - free[row], n)
        free[row] -= n
    return PackPlan(len(free), width, slots)


def pack(tensor: torch.Tensor, plan: PackPlan, fill: int) -> torch.Tensor:
    out = torch.full((plan.rows, plan.width), fill, dtype=tensor.dtype, device=tensor.device)
    for i, (row, offset, n) in enumerate(plan.slots):
        out[row, offset : offset + n] = tensor[i, :n]
    return out


def packed_position_ids(plan: PackPlan, device: torch.device) -> torch.Tensor:
    """Positions restart at 0 for every sequence, and for the padding left at the end of a row (its own
    segment, so nothing attends to it and it attends to nothing real)."""
    positions = torch.zeros((plan.rows, plan.width), dtype=torch.long, device=device)
    used = [0] * plan.rows
    for row, offset, n in plan.slots:
        positions[row, offset : offset + n] = torch.arange(n, device=device)
        used[row] = max(used[row], offset + n)
    for row, end in enumerate(used):
        positions[row, end:] = torch.arange(plan.width - end, device=device)
    return positions


def unpack_shifted(tensor: torch.Tensor, plan: PackPlan, batch: int, width: int) -> torch.Tensor:
    """Per-token outputs of a causal LM (index j predicts token j+1) from the packed layout back to the padded
    one; positions past a sequence's end are 0, as the padded forward gives for masked labels."""
    out = tensor.new_zeros((batch, width - 1, *tensor.shape[2:]))
    for i, (row, offset, n) in enumerate(plan.slots):
        if n > 1:
            out[i, : n - 1] = tensor[row, offset : offset + n - 1]
    return out


def segment_ids(plan: PackPlan, device: torch.device) -> torch.Tensor:
    """(rows, width): which sequence each packed cell holds; the padding left at the end of a row is a segment of
    its own (it attends to itself only, so no softmax row is empty)."""
    segments = torch.full((plan.rows, plan.width), -1, dtype=torch.long, device=device)
    for i, (row, offset, n) in enumerate(plan.slots):
        segments[row, offset : offset + n] = i
    return segments.masked_fill(segments < 0, len(plan.slots))


def block_causal(segments: torch.Tensor) -> torch.Tensor:
    """(rows, 1, width, width) bool: a position may attend to the earlier positions of its own segment."""
    width = segments.shape[1]
    causal = torch.ones((width, width), dtype=torch.bool, device=segments.device).tril()
    return (segments[:, None, :, None] == segments[:, None, None, :]) & causal


def model_masks(allowed: torch.Tensor, positions: torch.Tensor, masks: AttentionMasks,
                dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """The attention mask(s) to hand the model for a packed layout: `allowed` (rows, 1, W, W) narrowed, for each
    sliding-window layer type, to the keys less than the window behind the query by position (as transformers'
    window reads it: q - k < window), made additive for eager attention and a block mask for flex attention."""
    distance = positions[:, None, :, None] - positions[:, None, None, :]
    out = {}
    for kind, window in masks.windows.items():
        mask = allowed if window is None else allowed & (distance < window)
        if masks.form == "additive":
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        elif masks.form == "block":
            mask = flex_block_mask(mask)
        out[kind] = mask
    return out if masks.per_layer_type else next(iter(out.values()))


def flex_block_mask(allowed: torch.Tensor) -> Any:
    """`allowed` (rows, 1, W, W) as flex attention's BlockMask: its mask function reads the relation built above
    (document boundaries, the shared prompt, the window), and the blocks it leaves empty are skipped, which is
    where packing saves flex its work."""
    from torch.nn.attention.flex_attention import create_block_mask

    dense = allowed[:, 0]

    def mask_mod(b, h, q, k):
        return dense[b, q, k]

    rows, width = dense.shape[0], dense.shape[1]
    return create_block_mask(mask_mod, rows, None, width, width, device=dense.device)


def _param_dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


class PackedForward:
    """Stands in for the model inside TRL's DPO loss: called like the model on a right-padded batch with
    `labels` and `fused_lm_head=True`, it runs the packed batch and returns outputs in the padded layout. With
    `masks` (sdpa and eager attention) it hands the model each sequence's attention block itself, windows
    included; without, the model builds them from the position ids (FlashAttention's varlen path)."""

    def __init__(self, model: Any, pad_token_id: int, masks: AttentionMasks | None = None) -> None:
        self.model, self.pad_token_id, self.masks = model, pad_token_id, masks

    def __call__(self, input_ids, attention_mask, labels, **kwargs):
        batch, width = input_ids.shape
        lengths = attention_mask.sum(dim=1).tolist()
        plan = plan_packing([int(n) for n in lengths], width)
        positions = packed_position_ids(plan, input_ids.device)
        if self.masks is not None:
            allowed = block_causal(segment_ids(plan, input_ids.device))
            kwargs["attention_mask"] = model_masks(allowed, positions, self.masks, _param_dtype(self.model))
        with router_token_weights(pack(attention_mask, plan, 0)):
            outputs = self.model(input_ids=pack(input_ids, plan, self.pad_token_id), position_ids=positions,
                                 labels=pack(labels, plan, -100), **kwargs)
        for name, value in list(outputs.items()):
            if torch.is_tensor(value) and value.dim() >= 2 and value.shape[:2] == (plan.rows, width - 1):
                outputs[name] = unpack_shifted(value, plan, batch, width)
        return outputs


# ------------------------------------------------------------------------------------------- prefix sharing
# A DPO batch holds every prompt twice: rows [prompt + chosen] and [prompt + rejected]. Computing the prompt once
# per pair removes a third or more of the tokens at UltraFeedback lengths. Each pair becomes one segment:
#
#     prompt[0..P-1]  chosen[0..C-1]  prompt[P-1]'  rejected[0..R-1]
#
# The rejected tokens attend to prompt[0..P-2], to prompt[P-1]' (a copy of the prompt's last token, with its
# position) and to each other, never to the chosen ones. The copy exists because the prompt's last position
# predicts both completions' first tokens, and the fused LM head scores one label per position. The copy sees what
# the original sees (the same token at the same position after the same prefix), so its hidden state is the
# original's: every log-prob is the padded forward's, up to the order of floating-point sums.
@dataclass
class SharedPromptLayout:
    input_ids: torch.Tensor  # (rows, width): the packed segments
    position_ids: torch.Tensor
    shift_labels: torch.Tensor  # the label scored AT each position (-100: none)
    attention_mask: torch.Tensor  # (rows, 1, width, width) bool, True: may attend
    token_weights: torch.Tensor  # (rows, width): how often the padded batch holds each token (prompts: twice)
    source: torch.Tensor  # (2B, W-1): flat packed index of each padded output position, -1 for none

    def unpack(self, value: torch.Tensor) -> torch.Tensor:
        """Per-position outputs of the packed rows back to the padded layout (TRL's: index j predicts j+1)."""
        flat = value.reshape(-1, *value.shape[2:])
        out = flat[self.source.clamp(min=0)]
        valid = (self.source >= 0).view(*self.source.shape, *([1] * (value.dim() - 2)))
        return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))


def shared_prompt_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                         pad_token_id: int) -> SharedPromptLayout | None:
    """The segments of a TRL DPO batch (rows: B chosen, then B rejected, flushed left, labels -100 on the prompt),
    packed first-fit-decreasing. None when the batch is not that: a row without a completion (truncated away), a
    pair whose prompts differ, padding inside a row."""
    rows2, width = input_ids.shape
    lengths = attention_mask.sum(dim=1)
    flushed_left = torch.arange(width, device=input_ids.device)[None, :] < lengths[:, None]
    labelled = labels != -100
    if rows2 % 2 or not torch.equal(attention_mask.bool(), flushed_left) or not bool(labelled.any(dim=1).all()):
        return None
    pairs = rows2 // 2
    prompt = labelled.int().argmax(dim=1)  # the first labelled position: the prompt's length
    n, p = lengths.tolist(), prompt.tolist()
    segments = []  # (P, C, R) per pair
    for i in range(pairs):
        j = i + pairs
        if p[i] != p[j] or p[i] < 1 or not torch.equal(input_ids[i, : p[i]], input_ids[j, : p[j]]):
            return None
        segments.append((p[i], n[i] - p[i], n[j] - p[j]))
    spans = [P + C + 1 + R for P, C, R in segments]
    plan = plan_packing(spans, max(width, *spans))
    device, w = input_ids.device, plan.width
    ids = torch.full((plan.rows, w), pad_token_id, dtype=input_ids.dtype, device=device)
    positions = torch.zeros((plan.rows, w), dtype=torch.long, device=device)
    shift = torch.full((plan.rows, w), -100, dtype=labels.dtype, device=device)
    mask = torch.eye(w, dtype=torch.bool, device=device).repeat(plan.rows, 1, 1, 1)  # row padding: itself only
    weights = torch.zeros((plan.rows, w), dtype=torch.float32, device=device)
    source = torch.full((rows2, width - 1), -1, dtype=torch.long, device=device)
    for i, ((P, C, R), (row, off, S)) in enumerate(zip(segments, plan.slots, strict=True)):
        j, cut = i + pairs, off + P + C  # cut: where the prompt's copy goes
        ids[row, off:cut] = input_ids[i, : P + C]
        ids[row, cut] = input_ids[i, P - 1]
        ids[row, cut + 1 : off + S] = input_ids[j, P : P + R]
        positions[row, off:cut] = torch.arange(P + C, device=device)
        positions[row, cut : off + S] = torch.arange(P - 1, P + R, device=device)
        shift[row, off + P - 1 : cut - 1] = labels[i, P : P + C]
        shift[row, cut : cut + R] = labels[j, P : P + R]
        block = torch.ones((S, S), dtype=torch.bool, device=device).tril()
        block[P + C :, P - 1 : P + C] = False  # the rejected side sees neither the chosen side nor the original
        mask[row, 0, off : off + S, off : off + S] = block
        weights[row, off : off + S] = 1.0
        weights[row, off : off + P - 1] = 2.0
        base = row * w + off
        source[i, : P + C - 1] = base + torch.arange(P + C - 1, device=device)
        source[j, : P - 1] = base + torch.arange(P - 1, device=device)
        source[j, P - 1 : P + R - 1] = base + C + 1 + torch.arange(P - 1, P + R - 1, device=device)
    return SharedPromptLayout(ids, positions, shift, mask, weights, source)


class SharedPromptForward(PackedForward):
    """PackedForward with each pair's prompt computed once (see above), for kernels that take custom masks
    (zephyr/levers.py decides). Falls back to the plain packing for a batch that is not pairs of one prompt."""

    def __init__(self, model: Any, pad_token_id: int, masks: AttentionMasks) -> None:
        super().__init__(model, pad_token_id, masks)

    def __call__(self, input_ids, attention_mask, labels, **kwargs):
        layout = None
        if kwargs.get("fused_lm_head"):
            layout = shared_prompt_layout(input_ids, attention_mask, labels, self.pad_token_id)
        if layout is None:
            return super().__call__(input_ids, attention_mask, labels, **kwargs)
        mask = model_masks(layout.attention_mask, layout.position_ids, self.masks, _param_dtype(self.model))
        with router_token_weights(layout.token_weights):
            outputs = self.model(input_ids=layout.input_ids, position_ids=layout.position_ids, attention_mask=mask,
                                 shift_labels=layout.shift_labels, **kwargs)
        for name, value in list(outputs.items()):
            if torch.is_tensor(value) and value.dim() >= 2 and value.shape[:2] == layout.input_ids.shape:
                outputs[name] = layout.unpack(value)
        return outputs


def layout_forward(model: Any, choice: LayoutChoice, pad_token_id: int) -> Any:
    """The model as TRL's DPO loss should call it for the layout `choice` (zephyr/levers.py): packed (no padding),
    each prompt once per pair, or the model itself."""
    if choice.layout == "shared_prompt":
        return SharedPromptForward(model, pad_token_id, choice.masks)
    if choice.layout == "packed":
        return PackedForward(model, pad_token_id, choice.masks)
    return model
