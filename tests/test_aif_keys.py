"""AIF store keys are structured (JSON lists): a prompt id may contain any character, "|" included, and keeps every
judgment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from zephyr.aif import keys
from zephyr.inference.store import StoreError
from zephyr.stages import aif

IDS = ["a|b", "|leading", "trailing|", "x||y", "plain", "[1]"]


def by_length(prompt: str, responses: list[str]) -> list[float]:
    """A callable judge with no ties: longer is better."""
    return [len(r) + i / 100 for i, r in enumerate(responses)]


def write_recipe(tmp_path: Path, tiny: Path) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    questions = ["What is 1 + 2?", "Name a colour.", "Say hi.", "Count to three.", "Spell cat.", "Reverse 'ab'."]
    prompts.write_text("".join(json.dumps({"prompt_id": i, "prompt": q}) + "\n" for i, q in zip(IDS, questions, strict=True)))
    cfg = {
        "prompts": {"id": str(prompts)},
        "generators": [{"name": f"sampler|{seed}", "model": str(tiny / "model"), "temperature": 1.0,
                        "num_completions": 2, "max_new_tokens": 8, "batch_size": 12, "seed": seed}
                       for seed in (1, 2)],
        "judge": {"type": "callable", "callable": "test_aif_keys:by_length"},
        "binarization": {"score": "reward", "rejected": "lowest", "ties": "keep", "test_size": 0.0},
        "output_dir": str(tmp_path / "aif"),
    }
    path = tmp_path / "aif.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def pairs(out: Path) -> dict[str, dict]:
    import datasets

    rows = datasets.load_dataset("parquet", data_files=str(out / "data" / "train_prefs-00000-of-00001.parquet"),
                                 split="train").to_list()
    return {r["prompt_id"]: r for r in rows}


def test_prompt_ids_with_a_separator_keep_every_judgment_and_make_pairs(tiny_dir, tmp_path):
    summary = aif.main([str(write_recipe(tmp_path, tiny_dir))])
    out = tmp_path / "aif"
    assert (summary.prompts, summary.completions, summary.judged_prompts) == (6, 24, 6)
    raw = {r["prompt_id"]: r for r in map(json.loads, (out / "raw.jsonl").read_text().splitlines())}
    assert sorted(raw) == sorted(IDS)
    for row in raw.values():  # every answer of every prompt carries its judgment
        assert len(row["completions"]) == 4 and all(c["judgment"]["reward"] is not None for c in row["completions"])
    made = pairs(out)
    assert sorted(made) == sorted(IDS) and summary.pairs == 6
    assert all(r["score_chosen"] > r["score_rejected"] for r in made.values())


def test_keys_round_trip_and_other_text_is_refused():
    key = keys.completion_key("a|b", "gen|1", 3, "h")
    assert keys.key_parts(key) == ["a|b", "gen|1", 3, "h"]
    assert keys.sample_seed_text(key) == "a|b|gen|1|3"
    judged = keys.judgment_key("a|b", "judge", [key])
    assert keys.judge_of(judged) == "judge"
    for text in ("a|b|gen|1|3|h", '{"a": 1}'):
        with pytest.raises(StoreError, match="not an AIF store key"):
            keys.key_parts(text)
