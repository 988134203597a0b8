"""AIF building blocks on hand-made inputs: binarization policies, rubric parsing, the record store."""

from __future__ import annotations

import json
import re

import pytest

from zephyr.aif.binarize import Candidate, RatedPrompt, binarize, binarize_prompt, score_of
from zephyr.aif.config import BinarizationConfig
from zephyr.aif.rubric import ParseError, parse_critique, parse_ratings, rubric_messages
from zephyr.inference.store import RecordStore, StoreError

ASPECTS = ["instruction_following", "honesty", "truthfulness", "helpfulness"]


def cand(name, reward=None, ratings=None, overall=None, failure=None, judged=True):
    judgment = None
    if judged:
        judgment = {k: v for k, v in {"reward": reward, "ratings": ratings, "overall": overall,
                                      "failure": failure}.items() if v is not None}
    return Candidate(response=f"answer from {name}", model=name, judgment=judgment)


def cfg(**kw):
    return BinarizationConfig(**{"score": "reward", **kw})


# ------------------------------------------------------------------------------------------ scores
def test_score_sources():
    j = {"ratings": {"honesty": None, "helpfulness": 4.0, "truthfulness": 2.0}, "overall": 7.0, "reward": -0.5}
    assert score_of(j, "mean_aspects") == 3.0  # N/A ignored
    assert score_of(j, "overall") == 7.0
    assert score_of(j, "reward") == -0.5
    assert score_of({"ratings": {"honesty": None}}, "mean_aspects") is None  # all N/A: unscorable
    assert score_of({"failure": "x", "reward": 1.0}, "reward") is None
    assert score_of(None, "reward") is None


# ------------------------------------------------------------------------------------------ policies
def test_random_policy_chosen_is_best_rejected_any_other():
    cands = [cand("a", 1.0), cand("b", 9.0), cand("c", 5.0), cand("d", 3.0)]
    rejected_models = set()
    for seed in range(40):
        row, reason = binarize_prompt("q", "p1", cands, cfg(seed=seed))
        assert reason is None and row["chosen"][1]["content"] == "answer from b"
        assert row["score_chosen"] == 9.0
        rejected_models.add(row["rejected"][1]["content"])
    assert rejected_models == {"answer from a", "answer from c", "answer from d"}  # random among all the rest


def test_lowest_policy_takes_the_minimum():
    cands = [cand("a", 1.0), cand("b", 9.0), cand("c", 5.0)]
    row, _ = binarize_prompt("q", "p1", cands, cfg(rejected="lowest"))
    assert (row["score_chosen"], row["score_rejected"]) == (9.0, 1.0)
    assert row["rejected"][1]["content"] == "answer from a"


def test_random_lower_never_picks_a_tie():
    cands = [cand("a", 9.0), cand("b", 9.0), cand("c", 2.0)]
    for seed in range(30):
        row, reason = binarize_prompt("q", "p1", cands, cfg(rejected="random_lower", seed=seed))
        assert reason is None and row["score_rejected"] == 2.0


def test_ties_drop_and_keep():
    cands = [cand("a", 5.0), cand("b", 5.0)]
    assert binarize_prompt("q", "p", cands, cfg(ties="drop")) == (None, "tie")
    row, reason = binarize_prompt("q", "p", cands, cfg(ties="keep"))
    assert reason is None and row["score_chosen"] == row["score_rejected"] == 5.0
    assert binarize_prompt("q", "p", cands, cfg(rejected="random_lower")) == (None, "all answers tied")


def test_all_equal_scores_with_lowest_policy_is_a_tie():
    cands = [cand(x, 3.0) for x in "abc"]
    assert binarize_prompt("q", "p", cands, cfg(rejected="lowest", ties="drop")) == (None, "tie")


def test_mean_aspects_with_na_ratings():
    a = cand("a", ratings={"honesty": None, "helpfulness": 5.0, "truthfulness": 5.0})
    b = cand("b", ratings={"honesty": 1.0, "helpfulness": 5.0, "truthfulness": 3.0})
    row, _ = binarize_prompt("q", "p", [a, b], cfg(score="mean_aspects"))
    assert row["score_chosen"] == 5.0 and row["score_rejected"] == 3.0


def test_missing_and_failed_judgments_are_excluded():
    cands = [cand("a", 4.0), cand("b", judged=False), cand("c", failure="unparsable"), cand("d", 1.0)]
    row, _ = binarize_prompt("q", "p", cands, cfg(rejected="lowest"))
    assert (row["score_chosen"], row["score_rejected"]) == (4.0, 1.0)
    assert binarize_prompt("q", "p", cands[:3], cfg()) == (None, "fewer than 2 rated answers")


def test_min_gap_and_identical_answers():
    assert binarize_prompt("q", "p", [cand("a", 5.0), cand("b", 4.5)], cfg(min_gap=1.0)) == (
        None, "score gap below min_gap")
    same = [Candidate("x", "a", {"reward": 2.0}), Candidate(" x ", "b", {"reward": 1.0})]
    assert binarize_prompt("q", "p", same, cfg()) == (None, "identical answers")


def test_output_schema_is_ultrafeedback_binarized():
    row, _ = binarize_prompt("What?", "p9", [cand("a", 2.0), cand("b", 1.0)], cfg())
    assert sorted(row) == ["chosen", "messages", "prompt", "prompt_id", "rejected", "score_chosen", "score_rejected"]
    assert row["chosen"] == [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "answer from a"}]
    assert row["messages"] == row["chosen"] and row["rejected"][0] == row["chosen"][0]


def test_binarize_is_seeded_and_independent_of_prompt_order():
    prompts = [RatedPrompt(f"q{i}", f"id{i}", [cand(x, float((i * 7 + k) % 5)) for k, x in enumerate("abcd")])
               for i in range(30)]
    rows1, dropped1 = binarize(prompts, cfg(seed=3))
    rows2, dropped2 = binarize(list(reversed(prompts)), cfg(seed=3))
    assert sorted(rows1, key=lambda r: r["prompt_id"]) == sorted(rows2, key=lambda r: r["prompt_id"])
    assert dropped1 == dropped2 and sum(dropped1.values()) + len(rows1) == 30
    rows3, _ = binarize(prompts, cfg(seed=4))
    assert rows3 != rows1  # the seed matters


def test_a_later_turn_keeps_the_conversation_before_it_as_the_prompt():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    (row,), dropped = binarize([RatedPrompt("And now?", "d1#turn1", [cand("a", 2.0), cand("b", 1.0)], history)],
                               cfg())
    context = [*history, {"role": "user", "content": "And now?"}]
    assert not dropped and row["prompt"] == "And now?" and row["prompt_id"] == "d1#turn1"
    assert row["chosen"] == [*context, {"role": "assistant", "content": "answer from a"}]
    assert row["rejected"] == [*context, {"role": "assistant", "content": "answer from b"}]
    # what the trainers read: the conversation up to the turn is the prompt, each answer alone
    from zephyr.data.schemas import convert_row

    assert convert_row(row, "explicit_prompt") == {"prompt": context, "chosen": row["chosen"][-1:],
                                                   "rejected": row["rejected"][-1:]}


# ------------------------------------------------------------------------------------------ rubric
def block(n, io="4", honesty="N/A", truth="3", helpful="5"):
    return (f"### Answer {n}\nInstruction following: {io}\nRationale: follows it.\nHonesty: {honesty}\n"
            f"Rationale: nothing uncertain.\nTruthfulness: {truth}\nRationale: one slip.\nHelpfulness: {helpful}\n"
            "Rationale: useful.\n")


def test_parse_well_formed():
    ratings = parse_ratings(block(1) + "\n" + block(2, "1", "2", "1", "2"), 2, ASPECTS)
    assert ratings[0].ratings == {"instruction_following": 4.0, "honesty": None, "truthfulness": 3.0,
                                  "helpfulness": 5.0}
    assert ratings[0].rationales["truthfulness"] == "one slip."
    assert ratings[1].ratings["honesty"] == 2.0


def test_parse_tolerates_extra_text_markdown_and_order():
    text = ("Sure, here you go!\n\n" + block(2, "**2**", "3/5", "2", "1").replace("Truthfulness", "**Truthfulness**")
            + "\nSome musing in between.\n" + block(1) + "\nHope this helps.")
    ratings = parse_ratings(text, 2, ASPECTS)
    assert ratings[0].ratings["helpfulness"] == 5.0  # blocks mapped by number, not position
    assert ratings[1].ratings == {"instruction_following": 2.0, "honesty": 3.0, "truthfulness": 2.0,
                                  "helpfulness": 1.0}


@pytest.mark.parametrize(
    "text, message",
    [
        (block(1), "no block for answer(s) [2]"),  # partial: one answer missing
        (block(1) + block(2, helpful="7"), "outside 1-5"),  # out of range
        (block(1) + block(2, truth="0"), "outside 1-5"),
        (block(1) + block(2, io="N/A"), "N/A is not allowed for instruction_following"),
        (block(1) + block(2).replace("Helpfulness: 5", "Helpfulness: great"), "no rating for helpfulness"),
        ("I cannot rate these answers.", "no block for answer(s) [1, 2]"),  # malformed
    ],
)
def test_parse_rejects_incomplete_or_out_of_range(text, message):
    with pytest.raises(ParseError, match=re.escape(message)):
        parse_ratings(text, 2, ASPECTS)


def test_parse_critique():
    assert parse_critique("Critique: short but right.\nOverall score: 8") == (8.0, "short but right.")
    assert parse_critique("critique - meh\n**Overall Score**: 3/10")[0] == 3.0
    for bad in ("Overall score: 11", "Overall score: N/A", "no score at all"):
        with pytest.raises(ParseError):
            parse_critique(bad)


def test_rubric_prompt_shows_every_answer_and_aspect():
    messages = rubric_messages("Add 2 and 3.", ["5", "6", "4"], ASPECTS)
    user = messages[-1]["content"]
    assert all(f"<answer {i}>" in user for i in (1, 2, 3)) and "Add 2 and 3." in user
    assert all(a in user for a in ("Instruction following", "Honesty", "Truthfulness", "Helpfulness"))
    assert "N/A" in user


# ------------------------------------------------------------------------------------------ store
def test_store_appends_dedupes_and_cuts_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "s.jsonl"
    store = RecordStore(path)
    assert store.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}]) == 2
    assert store.append([{"key": "a", "v": 9}, {"key": "c", "v": 3}]) == 1  # known keys are skipped
    with open(path, "ab") as f:
        f.write(b'{"key": "d", "v"')  # a kill -9 in the middle of a write
    reopened = RecordStore(path)
    assert sorted(reopened.records) == ["a", "b", "c"] and reopened.get("a")["v"] == 1
    assert "incomplete last record" in caplog.text
    reopened.append([{"key": "d", "v": 4}])
    lines = path.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "b", "c", "d"]  # nothing glued to the torn bytes


def test_store_refuses_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(StoreError, match="s.jsonl:2"):
        RecordStore(path)


# ------------------------------------------------------------------------------------------ LLM judge
class RubricBackend:
    """Stands in for the judge's endpoint: rates the answer "right" 5 on every aspect, anything else 2, and
    gives critique scores 9 / 3. Records what it was shown."""

    def __init__(self):
        self.requests = []

    def complete(self, requests, seed=0):
        from zephyr.inference.backends import ChatResult

        self.requests += requests
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            if "Overall score" in text:
                answer = text.split("Answer:\n")[1].split("\n\n")[0]
                out.append(ChatResult(f"Critique: fine.\nOverall score: {9 if answer == 'right' else 3}"))
                continue
            blocks = []
            for i in range(1, text.count("</answer ") + 1):
                answer = text.split(f"<answer {i}>\n")[1].split(f"\n</answer {i}>")[0]
                k = 5 if answer == "right" else 2
                blocks.append(f"### Answer {i}\n" + "\n".join(
                    f"{a}: {k}\nRationale: because {answer}." for a in
                    ("Instruction following", "Honesty", "Truthfulness", "Helpfulness")))
            out.append(ChatResult("\n".join(blocks)))
        return out


def test_llm_judge_shuffles_maps_back_and_adds_overall_scores(monkeypatch):
    from zephyr.aif import judges
    from zephyr.inference.settings import JudgeConfig

    backend = RubricBackend()
    monkeypatch.setattr(judges, "make_backend", lambda cfg: backend)
    judge = judges.LLMJudge(JudgeConfig(type="llm", backend="openai", model="j", overall_score=True))
    tasks = [judges.JudgeTask(f"p{i}", "q", ["wrong", "right", "also wrong"]) for i in range(8)]
    results = judge.judge(tasks)
    for judgments in results:
        assert [j["ratings"]["helpfulness"] for j in judgments] == [2.0, 5.0, 2.0]  # mapped back to its answer
        assert judgments[1]["rationales"]["honesty"] == "because right."
        assert [j["overall"] for j in judgments] == [3.0, 9.0, 3.0] and judgments[1]["critique"] == "fine."
    shown = [r.messages[-1]["content"] for r in backend.requests if "<answer 1>" in r.messages[-1]["content"]]
    first_shown = {s.split("<answer 1>\n")[1].split("\n")[0] for s in shown}
    assert first_shown == {"wrong", "right", "also wrong"}  # the order shown differs between prompts
    row, _ = binarize_prompt("q", "p0", [Candidate(a, "m", j) for a, j in zip(tasks[0].responses, results[0],
                                                                                 strict=True)],
                             BinarizationConfig(score="overall", rejected="lowest"))
    assert row["chosen"][1]["content"] == "right" and row["score_chosen"] == 9.0
