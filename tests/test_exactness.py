"""The exactness matrix: every speed lever of the preference forward, on every architecture family a user may
train with DPO, gives the padded forward's log-probs, gradients and MoE auxiliary loss, and no answer sees the
other. Tiny random configs built here, with sliding windows shorter than the sequences and both layer types where
a family has two. A new architecture is one line of ARCHITECTURES.

The layout tested is the one zephyr/levers.py chooses for the model (as the DPO trainer does); where it falls back,
the test also shows that the layout it refused is wrong for that model, so no rule is there for nothing.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from trl.trainer.utils import add_fused_lm_head

from zephyr.hooks import cpu_log_prob_kernel, labelled_positions_only
from zephyr.levers import AttentionMasks, LayoutChoice, choose_layout
from zephyr.packing import PackedForward, SharedPromptForward, layout_forward

VOCAB, WINDOW, PAD = 96, 6, 0
# initializer_range 0.2 (10x the usual): a random model that hardly looks at its context would hide a leak
WIDE = dict(initializer_range=0.2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            vocab_size=VOCAB, max_position_embeddings=256, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
MOE = dict(num_experts_per_tok=2, router_aux_loss_coef=0.02, output_router_logits=False)
TWO_TYPES = ["sliding_attention", "full_attention"]

# name: (model_type, config overrides, attention kernel, layout zephyr must choose when asked for the shared prompt)
ARCHITECTURES = {
    "llama": ("llama", {}, "sdpa", "shared_prompt"),
    "mistral-window": ("mistral", {"sliding_window": WINDOW}, "sdpa", "shared_prompt"),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
                     "sdpa", "shared_prompt"),
    "qwen3": ("qwen3", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}, "sdpa",
              "shared_prompt"),
    "qwen3-moe": ("qwen3_moe", {**MOE, "num_experts": 4, "moe_intermediate_size": 32, "use_sliding_window": True,
                                "sliding_window": WINDOW}, "sdpa", "shared_prompt"),
    "mixtral-window": ("mixtral", {**MOE, "num_local_experts": 4, "sliding_window": WINDOW}, "sdpa", "shared_prompt"),
    "gemma2": ("gemma2", {"sliding_window": WINDOW, "layer_types": TWO_TYPES, "query_pre_attn_scalar": 8}, "eager",
               "shared_prompt"),
    "gemma3": ("gemma3_text", {"sliding_window": WINDOW, "layer_types": TWO_TYPES, "query_pre_attn_scalar": 8},
               "sdpa", "shared_prompt"),
    "phi3": ("phi3", {"sliding_window": WINDOW}, "sdpa", "shared_prompt"),
    "olmo2": ("olmo2", {}, "sdpa", "shared_prompt"),
    "gpt-oss": ("gpt_oss", {**MOE, "num_local_experts": 4, "sliding_window": WINDOW, "layer_types": TWO_TYPES},
                "eager", "shared_prompt"),
    "smollm3": ("smollm3", {}, "sdpa", "shared_prompt"),
    "granite": ("granite", {"logits_scaling": 2.0}, "sdpa", "shared_prompt"),
    "cohere2": ("cohere2", {"sliding_window": WINDOW, "layer_types": TWO_TYPES}, "sdpa", "shared_prompt"),
    "lfm2": ("lfm2", {"layer_types": ["conv", "full_attention"], "block_ff_dim": 64}, "sdpa", "padded"),
}
DTYPES = {"fp32": torch.float32, "bf16-autocast": torch.bfloat16}
_models: dict[str, torch.nn.Module] = {}


def tiny_model(name: str) -> torch.nn.Module:
    """A 2-layer random model of the family (built once per test process), in eval mode, with TRL's fused head."""
    if name not in _models:
        model_type, overrides, kernel, _ = ARCHITECTURES[name]
        config = transformers.AutoConfig.for_model(model_type, num_hidden_layers=2, **{**WIDE, **overrides})
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=kernel).eval()
        add_fused_lm_head(model)
        _models[name] = model
    return _models[name]


def dpo_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three pairs as TRL's DPO collator lays them out: B chosen rows then B rejected rows, each prompt + answer,
    right-padded, labels -100 on prompts and padding. Prompts and answers longer than the window."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 13, 7), (11, 3, 16), (19, 9, 2)]  # (prompt, chosen, rejected) lengths
    rows = []
    for prompt, chosen, _ in shapes:
        p = torch.randint(3, VOCAB, (prompt,), generator=gen)
        rows.append((p, torch.randint(3, VOCAB, (chosen,), generator=gen)))
    rows += [(rows[i][0], torch.randint(3, VOCAB, (r,), generator=gen)) for i, (_, _, r) in enumerate(shapes)]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), PAD)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.cat([p, a])
        mask[i, :n] = 1
        labels[i, len(p) : n] = a
    return ids, mask, labels


def run(forward, ids, mask, labels, dtype, moe: bool):
    """Per-token log-probs, the auxiliary loss (MoE) and the gradients of a weighted sum of both."""
    model = forward.model if isinstance(forward, PackedForward) else forward
    model.zero_grad()
    extra = {"output_router_logits": True} if moe else {}
    with torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
        out = forward(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False, **extra)
    weights = torch.linspace(0.5, 1.5, ids.shape[0])[:, None]
    objective = (out.log_probs.float() * weights).sum() + (out.aux_loss.float() if moe else 0)
    objective.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach().float(), (out.aux_loss.detach().float() if moe else None), grads


_fp32: dict[str, tuple] = {}


def fp32_padded(arch: str) -> tuple:
    if arch not in _fp32:
        model = tiny_model(arch)
        _fp32[arch] = run(model, *dpo_batch(), torch.float32, is_moe(model))
    return _fp32[arch]


def deviation(got, want) -> tuple[float, float]:
    """The largest log-prob (or aux loss) difference, and the largest gradient difference relative to its
    tensor's largest gradient."""
    log_probs, aux, grads = got
    values = float((log_probs.double() - want[0].double()).abs().max())
    if aux is not None:
        values = max(values, float((aux.double() - want[1].double()).abs()))
    assert grads.keys() == want[2].keys()
    gradients = max(float((g.double() - want[2][n].double()).abs().max() / want[2][n].abs().max().clamp(min=1e-30))
                    for n, g in grads.items())
    return values, gradients


def assert_same(got, want, arch, dtype, what):
    """The lever does the padded forward's maths in another order, so it may differ from it by rounding only.
    fp32: 32 units in the last place of the values' scale (log-probs ~ log(vocabulary); gradients relative to
    their tensor's largest), room for a few roundings in each of the ~10 steps a value takes through 2 layers.
    bf16 autocast: twice bf16's own rounding on this model and batch (the padded forward under bf16 autocast
    against the padded fp32 forward), since either side may sit that far from the exact value."""
    if dtype == torch.float32:
        bounds = (32 * torch.finfo(dtype).eps * math.log(VOCAB), 32 * torch.finfo(dtype).eps)
    else:
        bounds = tuple(2 * x for x in deviation(want, fp32_padded(arch)))
    for kind, err, bound in zip(("log-probs", "gradients"), deviation(got, want), bounds, strict=True):
        assert err <= bound, f"{what}: {kind} off by {err:.2e}, more than rounding allows ({bound:.2e})"


def is_moe(model) -> bool:
    return hasattr(model.config, "output_router_logits")


LEVERS = ["packed_forward", "share_prompt", "lm_head_labels_only", "cpu_log_prob_kernel"]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("lever", LEVERS)
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_lever_gives_the_padded_forward(arch, lever, dtype_name):
    """Log-probs, MoE aux loss and gradients equal the padded forward's, within the dtype's rounding."""
    dtype, model = DTYPES[dtype_name], tiny_model(arch)
    ids, mask, labels = dpo_batch()
    moe = is_moe(model)
    want = run(model, ids, mask, labels, dtype, moe)
    if lever in ("packed_forward", "share_prompt"):
        choice = choose_layout(model.config, True, lever == "share_prompt", ARCHITECTURES[arch][2])
        got = run(layout_forward(model, choice, PAD), ids, mask, labels, dtype, moe)
    else:
        with (labelled_positions_only() if lever == "lm_head_labels_only" else cpu_log_prob_kernel()):
            got = run(model, ids, mask, labels, dtype, moe)
    assert_same(got, want, arch, dtype, f"{arch} {lever} {dtype_name}")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_levers_choose_the_expected_layout_and_no_answer_sees_the_other(arch):
    """The shared prompt is used where it is exact; changing every chosen answer moves no rejected log-prob, and
    changing one sequence moves no other sequence's under plain packing."""
    model, (_, _, kernel, expected) = tiny_model(arch), ARCHITECTURES[arch]
    choice = choose_layout(model.config, True, True, kernel)
    assert choice.layout == expected, choice.fallbacks
    assert bool(choice.fallbacks) == (expected != "shared_prompt")
    ids, mask, labels = dpo_batch()
    pairs = ids.shape[0] // 2
    changed = ids.clone()
    answers = labels[:pairs] != -100
    changed[:pairs][answers] = (changed[:pairs][answers] + 11) % (VOCAB - 3) + 3
    new_labels = labels.where(labels == -100, changed)
    forward = layout_forward(model, choice, PAD)
    with torch.no_grad():
        before = forward(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs
        after = forward(input_ids=changed, attention_mask=mask, labels=new_labels, fused_lm_head=True).log_probs
    torch.testing.assert_close(after[pairs:], before[pairs:], atol=8 * torch.finfo(torch.float32).eps, rtol=0)
    assert not torch.allclose(after[:pairs], before[:pairs])


def error_of_forced(model, forward, ids, mask, labels) -> float:
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs
        got = forward(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs
    return float((got - want).abs().max())


def test_the_refused_layouts_are_wrong_for_the_models_that_refuse_them():
    """Why each rule exists, shown on its model: the layouts zephyr refuses do change the log-probs there."""
    ids, mask, labels = dpo_batch()
    big = 1e-3  # nats: far above fp32 rounding (~1e-6 here)
    # a convolution layer mixes packed sequences whatever the mask (LFM2 falls back to padded batches)
    lfm2 = tiny_model("lfm2")
    assert error_of_forced(lfm2, PackedForward(lfm2, PAD, None), ids, mask, labels) > big
    # a shared-prompt mask without the window: sliding-window layers attend to everything (Mistral, Gemma-2)
    for arch, kinds in (("mistral-window", {"sliding_attention": None}),
                        ("gemma2", {"sliding_attention": None, "full_attention": None})):
        model = tiny_model(arch)
        blind = AttentionMasks(kinds, arch == "gemma2", "additive" if ARCHITECTURES[arch][2] == "eager" else "bool")
        assert error_of_forced(model, SharedPromptForward(model, PAD, blind), ids, mask, labels) > big, arch
    # gpt-oss builds its masks without the position ids: packed rows left to it leak across sequences
    gpt_oss = tiny_model("gpt-oss")
    assert error_of_forced(gpt_oss, PackedForward(gpt_oss, PAD, None), ids, mask, labels) > big


@pytest.mark.parametrize("arch", ["mistral-window", "gemma3", "llama"])
def test_flex_block_masks_hold_the_relation_of_the_sdpa_masks(arch):
    """Flex attention runs backward on CUDA only (the GPU kit checks its forward), so here its masks are checked
    for what they are: for the shared-prompt layout of a DPO batch, each layer type's BlockMask, read through its
    mask function at every (row, query, key), is the boolean mask sdpa gets, window included; and the blocks it
    marks as empty hold no allowed pair."""
    from torch.nn.attention.flex_attention import BlockMask

    from zephyr.packing import model_masks, shared_prompt_layout

    config = tiny_model(arch).config
    flex, sdpa = (choose_layout(config, True, True, kernel) for kernel in ("flex_attention", "sdpa"))
    assert flex.layout == "shared_prompt" and flex.fallbacks == [] and flex.masks.form == "block"
    layout = shared_prompt_layout(*dpo_batch(), PAD)
    want = model_masks(layout.attention_mask, layout.position_ids, sdpa.masks, torch.float32)
    got = model_masks(layout.attention_mask, layout.position_ids, flex.masks, torch.float32)
    want, got = (m if isinstance(m, dict) else {"all": m} for m in (want, got))
    assert set(got) == set(want) == ({"sliding_attention", "full_attention"} if arch == "gemma3" else {"all"})
    rows, _, width, _ = layout.attention_mask.shape
    b, q, k = torch.meshgrid(torch.arange(rows), torch.arange(width), torch.arange(width), indexing="ij")
    for kind, block in got.items():
        assert isinstance(block, BlockMask)
        assert torch.equal(block.mask_mod(b, torch.zeros_like(b), q, k), want[kind][:, 0]), kind
    if arch != "llama":  # the window is in the relation: without it, some allowed pair would differ
        assert not torch.equal(got[next(iter(got))].mask_mod(b, b, q, k), layout.attention_mask[:, 0])


def test_flex_block_mask_skips_exactly_the_blocks_packing_leaves_empty():
    """Rows of 3 packed sequences (600 tokens, 128-token blocks): the blocks the BlockMask runs are those holding
    an allowed (query, key) pair, so the blocks below the diagonal between two sequences are skipped."""
    from zephyr.packing import block_causal, flex_block_mask, plan_packing, segment_ids

    plan = plan_packing([300, 170, 130, 260, 90], 600)
    allowed = block_causal(segment_ids(plan, torch.device("cpu")))
    block = flex_block_mask(allowed)
    size = block.BLOCK_SIZE[0]
    rows, width = allowed.shape[0], allowed.shape[-1]
    pad = -width % size
    dense = torch.nn.functional.pad(allowed[:, 0], (0, pad, 0, pad))
    per_block = dense.view(rows, dense.shape[1] // size, size, dense.shape[2] // size, size).any(4).any(2)
    ran = block.to_dense()[:, 0].bool()  # (rows, query blocks, key blocks)
    assert torch.equal(ran, per_block)
    causal_blocks = torch.ones(per_block.shape[1:], dtype=torch.bool).tril()
    assert (ran.sum() < causal_blocks.sum() * rows)  # packing leaves work out that a causal mask would do


def test_fallbacks_name_the_lever_the_model_type_and_the_reason():
    lfm2 = choose_layout(tiny_model("lfm2").config, True, False, "sdpa")
    assert lfm2.record() == {"forward_layout": "padded", "forward_layout_fallbacks": [
        "packed_forward: off for lfm2: its layer type 'conv' mixes tokens along a packed row whatever the attention "
        "mask; padded batches"]}
    flash = choose_layout(tiny_model("llama").config, True, True, "flash_attention_2")
    assert flash.layout == "packed" and flash.masks is None
    assert flash.fallbacks == ["share_prompt: off for llama: attention kernel flash_attention_2 takes no custom "
                               "mask; plain packing"]
    assert choose_layout(tiny_model("llama").config, False, True, "sdpa") == LayoutChoice("padded", None)


@pytest.mark.parametrize(("model_type", "layer"), [
    ("qwen3_next", "linear_attention"), ("jamba", "linear_attention"), ("falcon_h1", "hybrid"),
    ("bamba", "linear_attention"), ("granitemoehybrid", "linear_attention"), ("nemotron_h", "linear_attention"),
    ("recurrent_gemma", "linear_attention"), ("llama4_text", "chunked_attention")])
def test_hybrid_and_unmasked_layer_types_fall_back_to_padded_batches(model_type, layer):
    """Decided from the config alone (transformers' defaults for the family): no packed layout for a model with
    a layer zephyr's masks do not govern."""
    choice = choose_layout(transformers.AutoConfig.for_model(model_type), True, True, "sdpa")
    assert choice.layout == "padded" and choice.masks is None
    assert choice.fallbacks[0].startswith(f"share_prompt: off for {model_type}: its layer type {layer!r} ")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lfm2", "mixtral-window", "gpt-oss", "gemma2"])
def test_dpo_runs_with_every_lever_on_and_records_its_layout(arch, tiny_dir, tmp_path, monkeypatch):
    """A real dDPO stage (precomputed reference, packed forward, shared prompt, all defaults) on a hybrid, an MoE
    with its router aux loss on, gpt-oss and Gemma-2: nothing crashes because a lever is on, step 0 is ln 2, and
    all_results.json says which layout ran and why."""
    import json
    import shutil

    from helpers import process_state_kept

    from zephyr.stages import dpo

    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "cache"))
    model_type, overrides, kernel, expected = ARCHITECTURES[arch]
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir / "model", folder)
    vocab = transformers.AutoConfig.from_pretrained(folder).vocab_size
    config = transformers.AutoConfig.for_model(model_type, num_hidden_layers=2,
                                               **{**WIDE, **overrides, "vocab_size": vocab})
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    out = tmp_path / "out"
    argv = [f"model_name_or_path={folder}", f"attn_implementation={kernel}", "dtype=float32",
            f"dataset_name={tiny_dir / 'data' / 'prefs'}", "dataset_train_split=train_prefs",
            "dataset_test_split=null", "max_train_samples=16", "long_rows=drop", "max_length=128",
            "per_device_train_batch_size=4", "max_steps=2", "warmup_steps=0", "logging_steps=1", "save_strategy=no",
            "report_to=none", "gradient_checkpointing=false", f"output_dir={out}", "seed=0", "bf16=false"]
    with process_state_kept():
        dpo.main(argv)
    results = json.loads((out / "all_results.json").read_text())
    assert results["forward_layout"] == expected
    assert bool(results["forward_layout_fallbacks"]) == (expected != "shared_prompt")
    steps = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(steps) == 2 and all(math.isfinite(h["loss"]) for h in steps)
    aux = MOE["router_aux_loss_coef"] * steps[0]["aux_loss"] if "aux_loss" in steps[0] else 0.0
    assert ("aux_loss" in steps[0]) == is_moe(tiny_model(arch))
    assert abs(steps[0]["loss"] - math.log(2) - aux) < 1e-4  # logged to 4 decimals
