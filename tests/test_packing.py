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
