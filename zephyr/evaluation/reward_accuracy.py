"""Implicit-reward accuracy of a DPO policy on held-out pairs: the share of pairs where
log p_policy(chosen) - log p_ref(chosen) > log p_policy(rejected) - log p_ref(rejected)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from zephyr.configs import DataArguments
from zephyr.data.pipeline import chat_ids, prepare_datasets
from zephyr.evaluation.config import RewardAccuracyConfig


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over the positions where `mask` is 1 (the completion), one value per row."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logps * mask[:, 1:]).sum(-1)


def encode_pairs(tokenizer, rows: list[dict]) -> list[tuple[list[int], int]]:
    """For each row: (ids of prompt+chosen, prompt length), then the same for rejected, alternating."""
    out = []
    for row in rows:
        prompt_len = len(chat_ids(tokenizer, row["prompt"], add_generation_prompt=True))
        for side in ("chosen", "rejected"):
            out.append((chat_ids(tokenizer, row["prompt"] + row[side]), prompt_len))
    return out


def batch_logps(model, encoded: list[tuple[list[int], int]], pad_id: int, batch_size: int) -> torch.Tensor:
    values = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        completion = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (row, prompt_len) in enumerate(chunk):  # right padding: positions stay those of the row alone
            ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
            completion[i, prompt_len : len(row)] = 1
        with torch.no_grad():
            values.append(sequence_logps(model, ids, attention, completion))
    return torch.cat(values)


def reward_margins(cfg: RewardAccuracyConfig) -> list[float]:
    """Per pair: (policy - reference log-ratio of chosen) - (same of rejected). Accuracy = share > 0."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.policy)
    data = DataArguments(dataset_name=cfg.dataset, dataset_train_split=cfg.split, dataset_test_split=None,
                         max_train_samples=cfg.max_pairs, invalid_rows="drop")
    rows, _, _ = prepare_datasets(data, "preference")
    encoded = encode_pairs(tokenizer, list(rows))
    logps = {}
    for name in ("policy", "reference"):
        model = AutoModelForCausalLM.from_pretrained(getattr(cfg, name), dtype=torch.float32).eval()
        logps[name] = batch_logps(model, encoded, tokenizer.pad_token_id, cfg.batch_size)
        del model
    ratio = logps["policy"] - logps["reference"]
    return (ratio[0::2] - ratio[1::2]).tolist()
