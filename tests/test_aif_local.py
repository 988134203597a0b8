"""AIF end to end with local transformers models: generation, LLM judge, reward-model judge, callable judge."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
import yaml
from transformers import AutoTokenizer, MistralConfig, MistralForSequenceClassification

from zephyr.embedded.tasks import judge as task_judge
from zephyr.inference.backends import ChatRequest, TransformersBackend
from zephyr.inference.failures import IncompleteError
from zephyr.inference.settings import EndpointSettings
from zephyr.stages import aif


def recipe(tmp_path, tiny, judge, n_prompts=12, **extra):
    cfg = {
        "prompts": {"id": str(tiny / "data" / "prefs"), "split": "train_prefs", "max_prompts": n_prompts},
        "generators": [
            {"name": "greedy", "model": str(tiny / "model"), "temperature": 0.0, "max_new_tokens": 8,
             "batch_size": 5},
            {"name": "sampled", "model": str(tiny / "model"), "temperature": 1.0, "num_completions": 2,
             "max_new_tokens": 8, "batch_size": 5, "principles": ["Be brief.", "Be exact."]},
        ],
        "judge": judge,
        "binarization": {"score": "reward", "ties": "keep"},
        "output_dir": str(tmp_path / "aif"),
        **extra,
    }
    path = tmp_path / "aif.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_local_generation_is_batched_left_padded_and_matches_unbatched(tiny_dir):
    backend = TransformersBackend(EndpointSettings(model=str(tiny_dir / "model"), batch_size=4))
    assert backend.tokenizer.padding_side == "left"
    prompts = ["What is 1 + 2?", "Reverse the word 'garden'.", "Hi", "Write 'tiger' in capital letters."]
    requests = [ChatRequest([{"role": "user", "content": p}], temperature=0.0, max_new_tokens=6) for p in prompts]
    batched = backend.complete(requests)
    alone = [backend.complete([r])[0] for r in requests]
    assert [r.text for r in batched] == [r.text for r in alone]  # padding never changes a greedy answer
    assert all(r.failure is None for r in batched)


def test_callable_judge_run_writes_dataset_raw_file_and_summary(tiny_dir, tmp_path):
    path = recipe(tmp_path, tiny_dir, {"type": "callable", "callable": "zephyr.embedded.tasks:judge"})
    summary = aif.main([str(path)])
    out = tmp_path / "aif"
    assert summary.prompts == 12 and summary.completions == 36 and summary.completions_new == 36
    assert summary.judged_prompts == 12 and not summary.failures
    raw = [json.loads(x) for x in (out / "raw.jsonl").read_text().splitlines()]
    assert len(raw) == 12 and all(len(r["completions"]) == 3 for r in raw)
    first = raw[0]["completions"]
    assert {c["model"] for c in first} == {"greedy", "sampled"}
    assert all(c["principle"] in ("Be brief.", "Be exact.") for c in first if c["model"] == "sampled")
    for r in raw:  # the stored reward is what the judge gives for the stored answer
        scores = task_judge(r["instruction"], [c["response"] for c in r["completions"]])
        assert [c["judgment"]["reward"] for c in r["completions"]] == scores
    rows = datasets.load_dataset(str(out), split="train_prefs").to_list()
    assert len(rows) + sum(summary.dropped.values()) == 12
    for row in rows:
        assert row["score_chosen"] >= row["score_rejected"]
        assert row["chosen"][0] == {"role": "user", "content": row["prompt"]}
    assert json.loads((out / "summary.json").read_text())["pairs"] == len(rows)


def test_local_llm_judge_garbage_is_recorded_as_failures(tiny_dir, tmp_path):
    judge = {"type": "llm", "backend": "transformers", "model": str(tiny_dir / "model"), "max_new_tokens": 8,
             "max_parse_retries": 1, "batch_size": 6}
    with pytest.raises(IncompleteError, match=r"6 of 24 missing .*6 judge: unparsable judge output"):
        aif.main([str(recipe(tmp_path, tiny_dir, judge, n_prompts=6))])  # failures are not results: exit 3
    out = tmp_path / "aif"
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 6 and all("unparsable judge output after 2 attempts" in f["reason"] for f in failures)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 0 and summary["dropped"] == {"fewer than 2 rated answers": 6}
    assert sum(summary["failures"].values()) == 6 and summary["missing"] == 6
    assert not (out / "data" / "train_prefs-00000-of-00001.parquet").exists()


def test_reward_model_judge(tiny_dir, tmp_path):
    rm_dir = tmp_path / "rm"
    tok = AutoTokenizer.from_pretrained(tiny_dir / "model")
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    MistralForSequenceClassification(config).save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    judge = {"type": "reward_model", "model": str(rm_dir), "batch_size": 4}
    summary = aif.main([str(recipe(tmp_path, tiny_dir, judge, n_prompts=5))])
    raw = [json.loads(x) for x in (tmp_path / "aif" / "raw.jsonl").read_text().splitlines()]
    rewards = [c["judgment"]["reward"] for r in raw for c in r["completions"]]
    assert len(rewards) == 15 and len(set(rewards)) > 1
    # The stored reward is the model's score of that conversation, independent of batching.
    model = MistralForSequenceClassification.from_pretrained(rm_dir).eval()
    first = raw[0]
    conv = [{"role": "user", "content": first["instruction"]},
            {"role": "assistant", "content": first["completions"][0]["response"]}]
    ids = tok.apply_chat_template(conv, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = model(**ids).logits[0, 0].item()
    assert abs(first["completions"][0]["judgment"]["reward"] - expected) < 1e-4
    assert summary.pairs + sum(summary.dropped.values()) == 5
