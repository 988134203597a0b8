"""`zephyr binarize`: raw UltraFeedback rows (rated completions) to ultrafeedback_binarized pairs, with the
H4, Argilla and distilabel policies (zephyr/aif/ratings.py)."""

from __future__ import annotations

import hashlib
import json

import datasets
import pytest

from zephyr import cli
from zephyr.aif.config import BinarizationConfig
from zephyr.aif.ratings import RatingsConfig, binarize_ratings
from zephyr.data.loading import DataError
from zephyr.data.schemas import RowError, detect_schema

ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")


def completion(model: str, ratings: tuple, overall: float) -> dict:
    return {"model": model, "principle": "helpfulness", "custom_system_prompt": "", "response": f"answer of {model}",
            "annotations": {a: {"Rating": str(r), "Rationale": "because"} for a, r in zip(ASPECTS, ratings, strict=True)},
            "overall_score": overall, "critique": "ok"}


ROWS = [  # openbmb/UltraFeedback's layout, 4 completions per instruction
    {"source": "evol", "instruction": "Name a prime.", "models": ["a", "b", "c", "d"], "completions": [
        completion("a", (5, 5, 5, 5), 9.0), completion("b", (2, "N/A", 2, 2), 4.0),
        completion("c", (3, 3, 3, 3), 6.0), completion("d", (1, 1, 1, 1), 2.0)]},
    {"source": "evol", "instruction": "Say hi.", "models": ["a", "b", "c", "d"], "completions": [
        completion("a", (4, 4, 4, 4), 5.0), completion("b", (4, 4, 4, 4), 8.0),
        completion("c", (4, 4, 4, 4), 5.0), completion("d", (4, 4, 4, 4), 5.0)]},  # mean ratings all tied
    {"source": "evol", "instruction": "Count to 3.", "models": ["a", "b", "c", "d"], "completions": [
        completion("a", (1, 2, 1, 2), 3.0), completion("b", (5, "N/A", 5, 4), 7.0),
        completion("c", (2, 2, 2, 2), 3.5), completion("d", (3, 3, 3, 3), 3.0)]},
]


@pytest.fixture
def raw_file(tmp_path):
    path = tmp_path / "ultrafeedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def pairs(out) -> dict[str, dict]:
    rows = datasets.load_dataset(str(out), split="train_prefs").to_list()
    return {r["prompt"]: r for r in rows}


def test_h4_policy_overall_score_random_rejected_ties_kept(raw_file, tmp_path):
    out = tmp_path / "h4"
    summary = binarize_ratings(RatingsConfig(source=str(raw_file), output_dir=str(out), binarization=(
        BinarizationConfig(score="overall", rejected="random", ties="keep"))))
    assert (summary["rows"], summary["pairs"]) == (3, 3)
    got = pairs(out)
    prime = got["Name a prime."]
    assert prime["chosen"] == [{"role": "user", "content": "Name a prime."},
                               {"role": "assistant", "content": "answer of a"}]
    assert prime["messages"] == prime["chosen"] and prime["score_chosen"] == 9.0
    assert prime["rejected"][1]["content"] != "answer of a" and prime["score_rejected"] in (4.0, 6.0, 2.0)
    assert prime["prompt_id"] == hashlib.sha256(b"Name a prime.").hexdigest()  # as in ultrafeedback_binarized
    assert got["Say hi."]["chosen"][1]["content"] == "answer of b"  # overall 8 wins although ratings tie
    assert detect_schema(list(prime), "preference") == "explicit_prompt"  # dDPO reads it as it is


def test_argilla_policy_mean_ratings_strictly_lower_rejected_ties_dropped(raw_file, tmp_path):
    out = tmp_path / "argilla"
    summary = binarize_ratings(RatingsConfig(source=str(raw_file), output_dir=str(out), binarization=(
        BinarizationConfig(score="mean_aspects", rejected="random_lower", ties="drop"))))
    assert summary["pairs"] == 2 and summary["dropped"] == {"all answers tied": 1}
    got = pairs(out)
    count = got["Count to 3."]  # b: (5 + 5 + 4) / 3 with honesty N/A left out = 4.667
    assert count["chosen"][1]["content"] == "answer of b" and count["score_chosen"] == pytest.approx(14 / 3)
    assert count["score_rejected"] < count["score_chosen"]


def test_distilabel_policy_lowest_rejected(raw_file, tmp_path):
    out = tmp_path / "distilabel"
    binarize_ratings(RatingsConfig(source=str(raw_file), output_dir=str(out), binarization=(
        BinarizationConfig(score="mean_aspects", rejected="lowest", ties="drop"))))
    got = pairs(out)
    assert got["Name a prime."]["rejected"][1]["content"] == "answer of d"
    assert got["Count to 3."]["rejected"][1]["content"] == "answer of a"  # mean 1.5, the lowest


def test_bad_rating_names_row_completion_and_aspect(raw_file, tmp_path):
    rows = json.loads(json.dumps(ROWS))
    rows[2]["completions"][1]["annotations"]["truthfulness"]["Rating"] = "7"
    raw_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 2: completions\[1\]: truthfulness: rating 7 is outside 1-5"):
        binarize_ratings(RatingsConfig(source=str(raw_file), output_dir=str(tmp_path / "x")))


def test_no_pair_is_an_error_and_the_command_line_works(raw_file, tmp_path, capsys):
    tied = tmp_path / "tied.jsonl"
    tied.write_text(json.dumps(ROWS[1]) + "\n")
    out = tmp_path / "cli"
    assert cli.main(["binarize", "--source", str(tied), "--output_dir", str(out),
                     "--binarization.rejected", "random_lower"]) == 2
    assert "no preference pair could be made from 1 prompts (1 all answers tied)" in capsys.readouterr().err
    assert not (out / "data").exists()
    assert cli.main(["binarize", "--source", str(raw_file), "--output_dir", str(out),
                     "--binarization.score", "overall", "--binarization.test_size", "0.34"]) == 0
    assert len(datasets.load_dataset(str(out), split="test_prefs")) == 1
    assert json.loads((out / "summary.json").read_text())["pairs"] == 3


def test_dpo_on_raw_ultrafeedback_points_to_zephyr_binarize():
    with pytest.raises(RowError, match="binarize it first with `zephyr binarize --source DATASET"):
        detect_schema(["source", "instruction", "models", "completions"], "preference")


def test_a_dialogue_rated_at_two_turns_makes_one_pair_per_turn(tmp_path):
    """Per-turn preferences: each rated assistant turn is a pair whose prompt is the dialogue up to that turn,
    with the dialogue's own replies before it; the trainers then read that conversation as the prompt."""
    turn1 = [completion("a", (5, 5, 5, 5), 9.0), completion("b", (1, 1, 1, 1), 2.0)]
    turn2 = [completion("c", (2, 2, 2, 2), 3.0), completion("d", (4, 4, 4, 4), 8.0)]
    dialogue = {"prompt_id": "d1", "messages": [
        {"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7", "completions": turn1},
        {"role": "user", "content": "And a bigger one?"}, {"role": "assistant", "content": "11", "completions": turn2},
        {"role": "user", "content": "Thanks."}, {"role": "assistant", "content": "You are welcome."}]}
    path = tmp_path / "dialogues.jsonl"
    path.write_text(json.dumps(dialogue) + "\n")
    summary = binarize_ratings(RatingsConfig(source=str(path), output_dir=str(tmp_path / "out"), binarization=(
        BinarizationConfig(score="overall", rejected="lowest"))))
    assert (summary["rows"], summary["rated_prompts"], summary["pairs"]) == (1, 2, 2)
    got = {r["prompt_id"]: r for r in datasets.load_dataset(str(tmp_path / "out"), split="train_prefs").to_list()}
    first = [{"role": "user", "content": "Name a prime."}]
    second = [*first, {"role": "assistant", "content": "7"}, {"role": "user", "content": "And a bigger one?"}]
    assert got["d1"]["chosen"] == [*first, {"role": "assistant", "content": "answer of a"}]
    assert got["d1"]["rejected"] == [*first, {"role": "assistant", "content": "answer of b"}]
    assert got["d1#turn1"]["prompt"] == "And a bigger one?"
    assert got["d1#turn1"]["chosen"] == [*second, {"role": "assistant", "content": "answer of d"}]
    assert got["d1#turn1"]["rejected"] == [*second, {"role": "assistant", "content": "answer of c"}]
    assert detect_schema(list(got["d1#turn1"]), "preference") == "explicit_prompt"


@pytest.mark.parametrize(("messages", "message"), [
    ([{"role": "user", "content": "hi", "completions": []}], r"messages\[0\]: completions belong on an assistant"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "no assistant message carries"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "completions": "bad"}],
     r"row 0: messages\[1\]: expected completions, a list"),
])
def test_a_dialogue_with_misplaced_or_missing_ratings_is_refused_with_its_row(tmp_path, messages, message):
    path = tmp_path / "dialogues.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError, match=message):
        binarize_ratings(RatingsConfig(source=str(path), output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out" / "data").exists()
