"""The padding-free DPO forward (zephyr/packing.py) gives the padded forward's log-probs and losses."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import stage_configs

from zephyr.packing import PackedForward, pack, packed_position_ids, plan_packing
from zephyr.stages import dpo


def test_plan_packs_every_sequence_once_without_overlap():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(40)]
    plan = plan_packing(lengths, width=100)
    assert plan.rows < len(lengths)  # packing happened
    used: dict[int, set[int]] = {}
    for (row, offset, n), length in zip(plan.slots, lengths, strict=True):
        assert n == length and offset + n <= plan.width
        cells = set(range(offset, offset + n))
        assert not cells & used.setdefault(row, set())  # no two sequences share a position
        used[row] |= cells
    assert sum(len(c) for c in used.values()) == sum(lengths)


def test_positions_restart_per_sequence_and_for_row_padding():
    plan = plan_packing([3, 2, 4], width=5)
    ids = torch.arange(15).reshape(3, 5)
    packed = pack(ids, plan, fill=-1)
    positions = packed_position_ids(plan, torch.device("cpu"))
    for i, (row, offset, n) in enumerate(plan.slots):
        assert packed[row, offset : offset + n].tolist() == ids[i, :n].tolist()
        assert positions[row, offset : offset + n].tolist() == list(range(n))
    assert (positions[:, 0] == 0).all()


def varied_pairs(path, n=24, seed=0):
    """Preference rows whose lengths vary a lot, as real ones do (so a batch has padding to remove)."""
    from zephyr.embedded.tasks import WORDS

    rng = random.Random(seed)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    rows = [{"prompt": [{"role": "user", "content": words(rng.choice([2, 3, 25]))}],
             "chosen": [{"role": "assistant", "content": words(rng.choice([1, 4, 30]))}],
             "rejected": [{"role": "assistant", "content": words(rng.choice([2, 6, 20]))}]} for _ in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def batch_and_trainer(tiny, tmp_path, **overrides):
    data = varied_pairs(tmp_path / "pairs.jsonl") if not (tmp_path / "pairs.jsonl").exists() else tmp_path / "pairs.jsonl"
    settings = {"dataset_name": str(data), "max_length": 256, **overrides}
    trainer, _, _ = dpo.build_trainer(*stage_configs("dpo", tiny, tmp_path, **settings))
    rows = [trainer.train_dataset[i] for i in range(8)]
    return trainer, trainer.data_collator(rows)


def fused(model, batch, labels):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                 fused_lm_head=True, use_cache=False)


def test_packed_log_probs_equal_padded_and_do_not_leak_across_sequences(tiny_dir, tmp_path):
    trainer, batch = batch_and_trainer(tiny_dir, tmp_path)
    model = trainer.model.eval()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    packed = PackedForward(model, trainer.processing_class.pad_token_id)
    with torch.no_grad():
        padded_out = fused(model, batch, labels)
        packed_out = packed(batch["input_ids"], batch["attention_mask"], labels, fused_lm_head=True, use_cache=False)
        torch.testing.assert_close(packed_out.log_probs, padded_out.log_probs, atol=1e-5, rtol=1e-5)
        plan = plan_packing(batch["attention_mask"].sum(1).tolist(), batch["input_ids"].shape[1])
        assert plan.rows < batch["input_ids"].shape[0]  # fewer rows computed than the padded batch
        # change every token of sequence 0: no other sequence's log-probs move (separate attention blocks)
        changed = batch["input_ids"].clone()
        n = int(batch["attention_mask"][0].sum())
        changed[0, 1:n] = (changed[0, 1:n] + 7) % model.config.vocab_size
        again = packed(changed, batch["attention_mask"], labels, fused_lm_head=True, use_cache=False)
        torch.testing.assert_close(again.log_probs[1:], packed_out.log_probs[1:], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_dpo_losses_with_and_without_packing_match(tiny_dir, tmp_path):
    losses = {}
    for packed in (False, True):
        (tmp_path / str(packed)).mkdir()
        trainer, _ = batch_and_trainer(tiny_dir, tmp_path / str(packed), packed_forward=packed, max_steps=5,
                                       learning_rate=1e-3)
        trainer.train()
        losses[packed] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses[True]) == 5 and losses[True][0] != losses[True][-1]
    for a, b in zip(losses[False], losses[True], strict=True):
        assert abs(a - b) < 1e-5


def test_lm_head_on_labelled_positions_only_gives_the_same_log_probs_and_gradients_for_less_work(tiny_dir, tmp_path):
    """zephyr/hooks/lm_head.py: on CPU TRL's fused head projects every position; inside `labelled_positions_only`
    it projects only the labelled ones: the same log-probs and gradients, minus exactly the masked positions' head
    FLOPs (counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from zephyr.hooks import labelled_positions_only

    trainer, batch = batch_and_trainer(tiny_dir, tmp_path)
    model = trainer.model.eval()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)

    def run():
        model.zero_grad()
        with FlopCounterMode(display=False) as counter:
            out = fused(model, batch, labels)
        out.log_probs.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.log_probs.detach(), grads, counter.get_total_flops()

    full, full_grads, full_flops = run()
    with labelled_positions_only():
        compact, grads, flops = run()
    torch.testing.assert_close(compact, full, atol=1e-5, rtol=1e-5)
    assert grads.keys() == full_grads.keys() and "lm_head.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    unlabelled = int((labels[:, 1:] == -100).sum())
    assert 0 < unlabelled < labels[:, 1:].numel()
    head = model.config.hidden_size * model.config.vocab_size
    assert full_flops - flops == 2 * head * unlabelled  # the forward's projection of the masked positions


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_shared_prompt_log_probs_equal_padded_with_fewer_tokens_and_no_leak_between_answers(tiny_dir, tmp_path,
                                                                                           kernel):
    """Each pair's prompt computed once (zephyr/packing.py): the padded forward's log-probs for both answers, fewer
    computed tokens than plain packing, and the rejected answer does not see the chosen one."""
    from zephyr.levers import choose_layout
    from zephyr.packing import SharedPromptForward, shared_prompt_layout

    trainer, batch = batch_and_trainer(tiny_dir, tmp_path)
    model = trainer.model.eval()
    model.set_attn_implementation(kernel)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    pad = trainer.processing_class.pad_token_id
    shared = SharedPromptForward(model, pad, choose_layout(model.config, True, True, kernel).masks)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        padded_out = fused(model, batch, labels)
        out = shared(ids, mask, labels, fused_lm_head=True, use_cache=False)
        torch.testing.assert_close(out.log_probs, padded_out.log_probs, atol=1e-5, rtol=1e-5)
        assert out.log_probs.shape == padded_out.log_probs.shape
        layout = shared_prompt_layout(ids, mask, labels, pad)
        pairs = ids.shape[0] // 2
        prompts = int((labels[:pairs, 1:] != -100).int().argmax(1).add(1).sum())  # each pair's prompt length
        # one prompt copy of one token per pair replaces the second copy of the whole prompt
        assert int((layout.input_ids != pad).sum()) == int(mask.sum()) - prompts + pairs
        # change every chosen answer: no rejected log-prob moves
        changed = ids.clone()
        completion = batch["completion_mask"].bool()
        changed[:pairs][completion[:pairs]] = (changed[:pairs][completion[:pairs]] + 5) % model.config.vocab_size
        again = shared(changed, mask, labels.where(labels == -100, changed), fused_lm_head=True, use_cache=False)
        torch.testing.assert_close(again.log_probs[pairs:], out.log_probs[pairs:], atol=1e-6, rtol=0)
        assert not torch.allclose(again.log_probs[:pairs], out.log_probs[:pairs])


def test_shared_prompt_falls_back_to_plain_packing_when_a_pair_has_two_prompts(tiny_dir, tmp_path):
    from zephyr.packing import shared_prompt_layout

    trainer, batch = batch_and_trainer(tiny_dir, tmp_path)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    pad = trainer.processing_class.pad_token_id
    assert shared_prompt_layout(batch["input_ids"], batch["attention_mask"], labels, pad) is not None
    other = batch["input_ids"].clone()
    other[-1, 0] = (other[-1, 0] + 1) % 100  # the last pair's rejected row has another prompt
    assert shared_prompt_layout(other, batch["attention_mask"], labels, pad) is None
    no_answer = labels.clone()
    no_answer[0] = -100  # a chosen answer truncated away
    assert shared_prompt_layout(batch["input_ids"], batch["attention_mask"], no_answer, pad) is None
