"""Tokenization invariants (BOS, prompt/answer boundaries, EOS, label masking, padding side, truncation), checked on what TRL's trainers actually feed the
model, with both embedded tokenizers: the 1k BPE one and Mistral-7B's real SentencePiece one."""

from __future__ import annotations

import json

import torch
from helpers import sequence_logps, stage_configs

from zephyr.data.pipeline import chat_ids
from zephyr.stages import dpo, sft

SYSTEM = {"role": "system", "content": "You are terse."}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


PREFERENCE_ROWS = [
    # single turn, answers of different lengths, one starting with a space (boundary-merge bait)
    {"prompt": [user("What is 2 + 3?")], "chosen": [assistant("2 + 3 = 5.")],
     "rejected": [assistant(" It is 6, I think, but I am not sure at all.")]},
    # system + multi-turn prompt
    {"prompt": [SYSTEM, user("Reverse 'cat'."), assistant("tac"), user("And 'dog'? ")],
     "chosen": [assistant("god")], "rejected": [assistant("dgo")]},
    {"prompt": [user("Say hi.")], "chosen": [assistant("hi")], "rejected": [assistant("Hello there, friend!")]},
]

SFT_ROWS = [
    {"messages": [user("What is 2 + 3?"), assistant("2 + 3 = 5.")]},
    {"messages": [SYSTEM, user("Reverse 'cat'."), assistant("tac"), user("And 'dog'?"), assistant(" god")]},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_trainer(tiny, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", PREFERENCE_ROWS)
    configs = stage_configs("dpo", tiny, tmp_path, dataset_name=str(data), long_rows="error")
    trainer, tokenizer, _ = dpo.build_trainer(*configs)
    return trainer, tokenizer


def test_dpo_rows_one_bos_one_eos_shared_prompt(any_tiny_dir, tmp_path):
    trainer, tok = dpo_trainer(any_tiny_dir, tmp_path)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert tok.pad_token_id != eos  # pitfall 3: pad == eos would hide the EOS label
    rows = list(trainer.train_dataset)
    assert len(rows) == len(PREFERENCE_ROWS)
    for ex in rows:
        # the prompt is exactly the template's rendering of the prompt: no tokens lost at the boundary,
        # and chosen and rejected share these ids
        assert ex["prompt_ids"] == chat_ids(tok, ex["prompt"], add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            full = ex["prompt_ids"] + ex[f"{side}_ids"]
            assert full == chat_ids(tok, ex["prompt"] + ex[side])  # prompt + completion, nothing merged
            assert full[0] == bos and full.count(bos) == 1  # pitfall 1
            completion = ex[f"{side}_ids"]
            assert completion[-1] == eos and completion.count(eos) == 1  # pitfall 3
            # pitfall 4: the first answer token is in the completion (no off-by-one)
            assert tok.decode(completion[:-1]).strip() == ex[side][0]["content"].strip()


def test_dpo_collator_masks_prompt_on_both_sides(any_tiny_dir, tmp_path):
    trainer, tok = dpo_trainer(any_tiny_dir, tmp_path)
    rows = list(trainer.train_dataset)
    batch = trainer.data_collator(rows)
    n = len(rows)
    assert batch["input_ids"].shape[0] == 2 * n  # chosen rows, then rejected rows
    for i, ex in enumerate(rows):
        for j, side in ((i, "chosen"), (i + n, "rejected")):
            mask = batch["completion_mask"][j]
            prompt_len, completion_len = len(ex["prompt_ids"]), len(ex[f"{side}_ids"])
            assert mask[:prompt_len].sum() == 0  # prompt masked, also on the rejected side
            assert mask.sum() == completion_len  # label count == completion length
            assert mask[prompt_len : prompt_len + completion_len].all()
            last = prompt_len + completion_len - 1
            assert batch["input_ids"][j, last] == tok.eos_token_id and mask[last] == 1  # EOS trained


def test_logps_in_padded_batch_equal_row_alone(any_tiny_dir, tmp_path):
    """Pitfall 5: right padding must not change a row's log-prob."""
    trainer, _ = dpo_trainer(any_tiny_dir, tmp_path)
    model = trainer.model.eval()
    rows = list(trainer.train_dataset)
    with torch.no_grad():
        batch = trainer.data_collator(rows)
        together = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        assert (batch["attention_mask"] == 0).any()  # the batch really is padded
        for i, ex in enumerate(rows):
            alone = trainer.data_collator([ex])
            logps = sequence_logps(model, alone["input_ids"], alone["attention_mask"], alone["completion_mask"])
            torch.testing.assert_close(logps[0], together[i], atol=1e-5, rtol=1e-6)
            torch.testing.assert_close(logps[1], together[i + len(rows)], atol=1e-5, rtol=1e-6)


def test_sft_labels_cover_assistant_turns_and_eos_only(any_tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", SFT_ROWS)
    configs = stage_configs("sft", any_tiny_dir, tmp_path, dataset_name=str(data), long_rows="error")
    trainer, tok, _ = sft.build_trainer(*configs)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    examples = list(trainer.train_dataset)
    batch = trainer.data_collator(examples)
    for k, ex in enumerate(examples):
        ids, labels = batch["input_ids"][k], batch["labels"][k]
        n = len(ex["input_ids"])
        assert ids[0] == bos and (ids[:n] == bos).sum() == 1
        assert (labels[n:] == -100).all()  # padding never trained
        trained = (labels != -100).nonzero().flatten().tolist()
        spans = _contiguous(trained)
        answers = [m["content"] for m in ex["messages"] if m["role"] == "assistant"]
        assert len(spans) == len(answers)  # one trained span per assistant turn, nothing else
        for (start, end), answer in zip(spans, answers, strict=True):
            span = ids[start:end].tolist()
            assert span[-1] == eos and span.count(eos) == 1  # each turn ends on a trained EOS
            assert tok.decode(span[:-1]).strip() == answer.strip()  # first answer token included
            assert (labels[start:end] == ids[start:end]).all()


def _contiguous(positions):
    spans, start = [], None
    for i, p in enumerate(positions):
        if start is None:
            start = p
        if i + 1 == len(positions) or positions[i + 1] != p + 1:
            spans.append((start, p + 1))
            start = None
    return spans
