"""Evaluation: statistics on known data, graders and position swapping, question files, the eval end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from zephyr.evaluation import graders
from zephyr.evaluation.graders import Grader, combine_verdicts, parse_rating, parse_verdict
from zephyr.evaluation.questions import Question, QuestionError, load_questions
from zephyr.evaluation.stats import bootstrap_mean, paired_difference
from zephyr.inference.backends import ChatResult
from zephyr.inference.settings import JudgeConfig
from zephyr.stages import eval as eval_stage


# ------------------------------------------------------------------------------------------ statistics
def test_bootstrap_of_a_constant_has_zero_width():
    est = bootstrap_mean([7.0] * 20)
    assert (est.mean, est.low, est.high, est.n) == (7.0, 7.0, 7.0, 20)


def test_bootstrap_interval_matches_the_normal_approximation():
    values = [0.0, 1.0] * 200  # mean 0.5, standard error 0.025
    est = bootstrap_mean(values, samples=4000, seed=1)
    assert est.mean == 0.5
    assert abs((est.high - est.low) - 2 * 1.96 * 0.025) < 0.01
    assert abs((est.low + est.high) / 2 - 0.5) < 0.01
    assert bootstrap_mean(values, samples=4000, seed=1) == est  # seeded: reproducible


def test_paired_difference_sees_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 10, size=60)
    shifted = paired_difference(base + 0.5, base)
    assert abs(shifted.mean - 0.5) < 1e-12 and shifted.excludes_zero()
    same = paired_difference(base + rng.normal(0, 1, size=60), base + rng.normal(0, 1, size=60))
    assert not same.excludes_zero()
    with pytest.raises(ValueError, match="differ in size"):
        paired_difference([1, 2], [1])


# ------------------------------------------------------------------------------------------ graders
def test_parse_rating_and_verdict():
    assert parse_rating("Clear and right. Rating: [[7]]") == 7.0
    assert parse_rating("[[3]] then on reflection Rating: [[8.5]]") == 8.5
    assert parse_rating("Rating: [[11]]") is None and parse_rating("Rating: 7") is None
    assert parse_verdict("B is better. [[B]]") == "B" and parse_verdict("[[ C ]]") == "C"
    assert parse_verdict("A") is None


@pytest.mark.parametrize("first, second, expected", [
    ("A", "B", 1.0),     # model wins in both orders
    ("B", "A", 0.0),     # baseline wins in both orders
    ("A", "A", 0.5),     # the judge always picks position A: position bias cancels out
    ("B", "B", 0.5),
    ("C", "C", 0.5),
    ("A", "C", 0.5),
    (None, "B", None),   # an unparsable verdict is no outcome: a failure to retry, not a tie
])
def test_position_swapping(first, second, expected):
    assert combine_verdicts(first, second) == expected


class ScriptedBackend:
    """Answers grading prompts like a judge would: fair (prefers the right answer) or position-biased."""

    def __init__(self, bias: str | None = None):
        self.bias, self.requests = bias, []

    def complete(self, requests, seed=0):
        self.requests += requests
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            if "[Answer A]" in text:
                a = text.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
                b = text.split("[Answer B]\n")[1].split("\n\nWhich")[0]
                verdict = self.bias or ("A" if a == "right" else "B" if b == "right" else "C")
                out.append(ChatResult(f"Verdict: [[{verdict}]]"))
            else:
                answer = text.split("[Assistant's answer to the last turn]\n")[1].split("\n\n")[0]
                out.append(ChatResult("Rating: [[9]]" if answer == "right" else "Rating: [[2]]"))
        return out


def llm_grader(monkeypatch, backend):
    monkeypatch.setattr(graders, "make_backend", lambda cfg: backend)
    return Grader(JudgeConfig(type="llm", backend="openai", model="judge", base_url="http://127.0.0.1:9/v1"))


def test_llm_pairwise_swaps_positions(monkeypatch):
    conv = [{"role": "user", "content": "q"}]
    fair = ScriptedBackend()
    judged = llm_grader(monkeypatch, fair).pairwise([(conv, "right", "wrong"), (conv, "wrong", "right")])
    assert [j["outcome"] for j in judged] == [1.0, 0.0]
    assert [j["verdicts"] for j in judged] == [["A", "B"], ["B", "A"]]  # the same answer wins in both orders
    assert len(fair.requests) == 4  # every pair judged in both orders
    orders = [(r.messages[-1]["content"].split("[Answer A]\n")[1][:5]) for r in fair.requests]
    assert orders == ["right", "wrong", "wrong", "right"]
    biased = ScriptedBackend(bias="A")
    assert llm_grader(monkeypatch, biased).pairwise([(conv, "right", "wrong")]) == [
        {"outcome": 0.5, "verdicts": ["A", "A"]}]  # whichever comes first wins: a tie, and not consistent


def test_llm_single_grading(monkeypatch):
    conv = [{"role": "user", "content": "q"}]
    assert llm_grader(monkeypatch, ScriptedBackend()).single([(conv, "right", None), (conv, "wrong", "ref")]) == [
        9.0, 2.0]


def test_callable_grader_on_hand_made_answers():
    grader = Grader(JudgeConfig(type="callable", callable="zephyr.embedded.tasks:judge"))
    conv = [{"role": "user", "content": "What is 2 + 3?"}]
    assert grader.single([(conv, "2 + 3 = 5.", None), (conv, "2 + 3 = 6.", None)]) == [10.0, 1.0 + 4.0 * 9 / 10]
    judged = grader.pairwise([(conv, "2 + 3 = 5.", "2 + 3 = 6."), (conv, "2 + 3 = 6.", "2 + 3 = 6.")])
    assert [j["outcome"] for j in judged] == [1.0, 0.5]


def test_reward_model_grader_scores_the_conversation_and_compares_by_score(tiny_dir, tmp_path):
    """judge: {type: reward_model} (e.g. what `zephyr rm` trains): the grade is the model's score of the whole
    conversation with the answer, and a pairwise verdict is the higher score, in both orders."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_dir / "model")
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    MistralForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    grader = Grader(JudgeConfig(type="reward_model", model=str(tmp_path / "rm")))
    conv = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "Five."},
            {"role": "user", "content": "And 2 + 4?"}]
    got = grader.single([(conv, "2 + 4 = 6.", None), (conv, "2 + 4 = 7.", None)])
    model = MistralForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    want = []
    for answer in ("2 + 4 = 6.", "2 + 4 = 7."):
        text = tok.apply_chat_template([*conv, {"role": "assistant", "content": answer}], tokenize=False)
        with torch.no_grad():
            want.append(model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item())
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6) and got[0] != got[1]
    better = 1.0 if want[0] > want[1] else 0.0
    assert [j["outcome"] for j in grader.pairwise([(conv, "2 + 4 = 6.", "2 + 4 = 7.")])] == [better]


def test_each_later_round_is_compared_with_the_round_before():
    from zephyr.evaluation.config import EvalConfig
    from zephyr.evaluation.questions import Question
    from zephyr.evaluation.summary import previous_round, summarize, table
    from zephyr.recipe import build_configs

    names = ["sft", "dpo", "dpo_r2", "dpo_r3"]
    assert [previous_round(n, names) for n in names] == [None, None, "dpo", "dpo_r2"]
    assert previous_round("dpo_r2", ["sft", "dpo_r2"]) is None  # nothing to compare with
    (cfg,) = build_configs({"questions": "q.jsonl", "models": [{"name": n, "model": n} for n in names],
                            "judge": {"type": "callable", "callable": "m:f"}, "output_dir": "o", "baseline": "sft",
                            "bootstrap_samples": 200}, (EvalConfig,))
    questions = [Question(f"q{i}", [f"turn {i}"], "math") for i in range(4)]
    grades = {"sft": [1, 2, 3, 4], "dpo": [2, 3, 4, 5], "dpo_r2": [4, 5, 6, 7], "dpo_r3": [4, 5, 6, 7]}
    grades = {n: {f"q{i}": [float(g)] for i, g in enumerate(gs)} for n, gs in grades.items()}
    results = summarize(cfg, questions, grades, None, None)
    r2, r3 = results["models"]["dpo_r2"], results["models"]["dpo_r3"]
    assert r2["score_minus_previous_round"] == {"mean": 2.0, "ci_low": 2.0, "ci_high": 2.0, "n": 4,
                                                "excludes_zero": True, "previous": "dpo", "questions": 4}
    assert r3["score_minus_previous_round"]["mean"] == 0.0 and not r3["score_minus_previous_round"]["excludes_zero"]
    assert "score_minus_previous_round" not in results["models"]["dpo"]
    assert "dpo_r2 - dpo +2.00 [+2.00, +2.00]; dpo_r3 - dpo_r2 +0.00 [+0.00, +0.00]" in table(results)


# ------------------------------------------------------------------------------------------ question files
def test_question_file_errors(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "turns": ["hi"]}\n{"question_id": 2, "turns": []}\n')
    with pytest.raises(QuestionError, match="q.jsonl:2: expected question_id and turns"):
        load_questions(path)
    path.write_text('{"question_id": 1, "turns": ["hi"]}\nnot json\n')
    with pytest.raises(QuestionError, match="q.jsonl:2: not JSON"):
        load_questions(path)
    path.write_text('{"question_id": 1, "turns": ["a"]}\n{"question_id": 1, "turns": ["b"]}\n')
    with pytest.raises(QuestionError, match="duplicate question_id 1"):
        load_questions(path)
    path.write_text('{"question_id": 81, "category": "writing", "turns": ["a", "b"], "reference": ["x", "y"]}\n')
    (q,) = load_questions(path)
    assert (q.question_id, q.category, q.turns, q.reference) == ("81", "writing", ["a", "b"], ["x", "y"])


# ------------------------------------------------------------------------------------------ end to end
def test_eval_end_to_end_multi_turn_resume_and_reward_accuracy(tiny_dir, tmp_path):
    questions = tmp_path / "q.jsonl"
    rows = [json.loads(x) for x in (tiny_dir / "data" / "eval" / "questions.jsonl").read_text().splitlines()][:12]
    rows[0]["turns"] = [rows[0]["turns"][0], rows[1]["turns"][0]]  # a two-turn question
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = str(tiny_dir / "model")
    recipe = {
        "questions": str(questions),
        "models": [{"name": "a", "model": model, "temperature": 0.0, "max_new_tokens": 6},
                   {"name": "b", "model": model, "temperature": 1.0, "max_new_tokens": 6, "seed": 3}],
        "judge": {"type": "callable", "callable": "zephyr.embedded.tasks:judge"},
        "mode": "both", "baseline": "a", "bootstrap_samples": 500,
        "reward_accuracy": {"policy": model, "reference": model, "dataset": str(tiny_dir / "data" / "prefs"),
                            "split": "test_prefs", "max_pairs": 8},
        "output_dir": str(tmp_path / "eval"),
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(recipe))
    results = eval_stage.main([str(path)])
    out = tmp_path / "eval"
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers[0]["answers"]["a"]) == 2 and len(answers[0]["grades"]["a"]) == 2  # both turns
    assert results["questions"] == 12
    a, b = results["models"]["a"], results["models"]["b"]
    per_q = [sum(x["grades"]["a"]) / len(x["grades"]["a"]) for x in answers]
    assert abs(a["score"]["mean"] - sum(per_q) / 12) < 1e-9
    assert a["score"]["ci_low"] <= a["score"]["mean"] <= a["score"]["ci_high"]
    assert set(a["categories"]) == {r["category"] for r in rows}
    assert "score_minus_baseline" in b and "win_rate_vs_baseline" in b and "score_minus_baseline" not in a
    assert "lc_win_rate_vs_baseline" in b and b["answer_length"]["answers"] == 13  # 12 questions, 13 turns
    # a scorer compares the answers, not their places: every verdict survives the swap
    assert results["judge"]["position_consistency"] == {"b": {"mean": 1.0, "pairs": 13}}
    assert f"Judge {results['judge']['identity']}: verdicts that survive swapping the answers (position " \
           "consistency): b 1.00 of 13 pairs" in (out / "results.md").read_text()
    # policy == reference: every implicit reward margin is exactly zero, so no pair is "won"
    assert results["reward_accuracy"]["mean"] == 0.0 and results["reward_accuracy"]["mean_margin"] == 0.0
    assert (out / "results.md").read_text().startswith("| model | score (1-10)")
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = next(out.glob("eval_records.*.jsonl"))
    lines = records.read_text().count("\n")
    assert eval_stage.main([str(path)]) == results  # resumed from the stored answers and grades
    assert records.read_text().count("\n") == lines  # nothing answered or graded twice


def test_questions_load_from_a_dataset_in_mt_bench_prompts_layout(tmp_path):
    """`questions: HuggingFaceH4/mt_bench_prompts` (prompt_id, prompt = list of turns), here a hub-layout folder."""
    import datasets

    from zephyr.evaluation.questions import QuestionError, load_questions

    folder = tmp_path / "mt_bench_prompts"
    (folder / "data").mkdir(parents=True)
    rows = [{"prompt_id": 81, "category": "writing", "prompt": ["Write a haiku.", "Now rhyme it."], "reference": []},
            {"prompt_id": 111, "category": "math", "prompt": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]}]
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    questions = load_questions(folder)
    assert [(q.question_id, q.category, q.turns, q.reference) for q in questions] == [
        ("81", "writing", ["Write a haiku.", "Now rhyme it."], []), ("111", "math", ["What is 2+2?", "And 3+3?"],
                                                                     ["4", "6"])]
    datasets.Dataset.from_list([{"prompt_id": 1, "prompt": []}]).to_parquet(
        str(folder / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(QuestionError, match="row 0: expected question_id and turns"):
        load_questions(folder)


# ------------------------------------------------------------------------------------ length-controlled win rate
def judged_by_a_length_loving_judge(theta: float, skew: float, n: int = 600, seed: int = 0):
    """Outcomes (1, 0.5, 0) of a judge whose log-odds are theta (the true quality gap) plus 1.5 tanh of the length
    difference in standard deviations; the model's answers are `skew` characters longer than the baseline's on
    average."""
    import numpy as np

    rng = np.random.default_rng(seed)
    d = rng.normal(skew, 400, n)
    p = 1 / (1 + np.exp(-(theta + 1.5 * np.tanh(d / d.std()))))
    u = rng.random(n)
    y = np.where(u < p - 0.05, 1.0, np.where(u < p + 0.05, 0.5, 0.0))  # some ties, as half a win
    return y, d


def grid_fit(y, d) -> float:
    """theta by brute force: the maximum of the log-likelihood on a grid, refined three times (independent of
    Newton's method)."""
    import numpy as np

    x = np.tanh(d / d.std())
    lo_t, hi_t, lo_p, hi_p = -3.0, 3.0, -5.0, 5.0
    for _ in range(4):
        t, p = np.meshgrid(np.linspace(lo_t, hi_t, 121), np.linspace(lo_p, hi_p, 121), indexing="ij")
        z = t[..., None] + p[..., None] * x
        ll = (y * -np.logaddexp(0, -z) + (1 - y) * -np.logaddexp(0, z)).sum(-1)
        i, j = np.unravel_index(ll.argmax(), ll.shape)
        st, sp = (hi_t - lo_t) / 120, (hi_p - lo_p) / 120
        lo_t, hi_t, lo_p, hi_p = t[i, j] - 2 * st, t[i, j] + 2 * st, p[i, j] - 2 * sp, p[i, j] + 2 * sp
    return float(t[i, j])


def test_length_controlled_win_rate_is_the_win_rate_at_equal_length():
    import math

    from zephyr.evaluation.stats import fit_length_logit, length_controlled_win_rate

    theta = 0.4  # the model is truly better: sigmoid(0.4) = 0.599 at equal length
    raw, controlled = {}, {}
    for skew in (-300.0, 300.0):  # its answers shorter, then longer, than the baseline's
        y, d = judged_by_a_length_loving_judge(theta, skew)
        fitted = fit_length_logit(y, d)[0]
        assert fitted == pytest.approx(grid_fit(y, d), abs=2e-3)  # Newton's fit is the likelihood's maximum
        est = length_controlled_win_rate(y, d, samples=300)
        assert est.mean == pytest.approx(1 / (1 + math.exp(-fitted)))
        assert est.low < 1 / (1 + math.exp(-theta)) < est.high  # the truth inside the interval
        raw[skew], controlled[skew] = float(y.mean()), est.mean
    assert raw[300.0] - raw[-300.0] > 0.2  # the raw win rate follows the length
    assert abs(controlled[300.0] - controlled[-300.0]) < 0.08  # the controlled one does not


def test_the_report_has_the_controlled_win_rate_and_the_answer_lengths():
    from zephyr.evaluation.config import EvalConfig
    from zephyr.evaluation.questions import Question
    from zephyr.evaluation.stats import length_controlled_win_rate
    from zephyr.evaluation.summary import summarize, table
    from zephyr.recipe import build_configs

    (cfg,) = build_configs({"questions": "q.jsonl", "models": [{"name": n, "model": n} for n in ("sft", "dpo")],
                            "judge": {"type": "callable", "callable": "m:f"}, "output_dir": "o", "baseline": "sft",
                            "mode": "pairwise", "bootstrap_samples": 200}, (EvalConfig,))
    questions = [Question(f"q{i}", [f"turn {i}"], "misc") for i in range(8)]
    answers = {"sft": {f"q{i}": ["x" * (10 + i)] for i in range(8)},
               "dpo": {f"q{i}": ["y" * (30 + 3 * i)] for i in range(8)}}
    answers["dpo"]["q7"] = [None]  # a failed answer: no length, no verdict
    wins = [1.0, 1.0, 0.5, 1.0, 0.0, 1.0, 1.0, None]
    outcomes = {"dpo": {f"q{i}": [w] for i, w in enumerate(wins)}}
    results = summarize(cfg, questions, None, outcomes, None, answers)
    dpo, sft = results["models"]["dpo"], results["models"]["sft"]
    diffs = [(30 + 3 * i) - (10 + i) for i in range(7)]
    want = length_controlled_win_rate(wins[:7], diffs, samples=200)
    assert dpo["lc_win_rate_vs_baseline"]["mean"] == pytest.approx(want.mean)
    assert dpo["lc_win_rate_vs_baseline"]["judged_turns"] == 7
    assert dpo["answer_length"]["mean"] == pytest.approx(sum(30 + 3 * i for i in range(7)) / 7)
    assert dpo["answer_length"]["minus_baseline"]["mean"] == pytest.approx(sum(diffs) / 7)
    assert sft["answer_length"]["answers"] == 8 and "minus_baseline" not in sft["answer_length"]
    text = table(results)
    assert "length-controlled win rate" in text.splitlines()[0]
    assert f"| {dpo['answer_length']['mean']:.1f} (+{sum(diffs) / 7:.1f} [" in text


@pytest.mark.parametrize(("bias", "consistency"), [(None, 1.0), ("A", 0.0)])
def test_position_consistency_is_the_share_of_verdicts_that_survive_the_swap(monkeypatch, tmp_path, bias,
                                                                              consistency):
    from zephyr.evaluation.config import EvalConfig
    from zephyr.evaluation.runner import grade_pairwise, position_consistency
    from zephyr.inference.failures import FailureLog
    from zephyr.inference.store import RecordStore
    from zephyr.recipe import build_configs

    monkeypatch.setattr(graders, "make_backend", lambda cfg: ScriptedBackend(bias))
    (cfg,) = build_configs({"questions": "q.jsonl", "models": [{"name": n, "model": n} for n in ("base", "new")],
                            "judge": {"type": "llm", "backend": "openai", "model": "judge",
                                      "base_url": "http://127.0.0.1:9/v1"},
                            "output_dir": str(tmp_path), "baseline": "base", "mode": "pairwise"}, (EvalConfig,))
    questions = [Question(f"q{i}", [f"turn {i}"], "misc") for i in range(4)]
    answers = {"base": {f"q{i}": ["wrong"] for i in range(4)}, "new": {f"q{i}": ["right"] for i in range(4)}}
    store = RecordStore(tmp_path / "records.jsonl")
    outcomes = grade_pairwise(cfg, Grader(cfg.judge), questions, answers, store, FailureLog(tmp_path / "f.jsonl"))
    assert outcomes == {"new": {f"q{i}": [1.0 if bias is None else 0.5] for i in range(4)}}
    assert position_consistency(cfg, questions, store) == {"new": {"mean": consistency, "pairs": 4}}


def test_the_judge_identity_changes_with_its_settings_and_its_prompt_text(monkeypatch):
    judge = JudgeConfig(type="llm", backend="openai", model="judge", base_url="http://127.0.0.1:9/v1")
    same = JudgeConfig(type="llm", backend="openai", model="judge", base_url="http://127.0.0.1:9/v1")
    assert graders.judge_identity(judge) == graders.judge_identity(same)
    warmer = JudgeConfig(type="llm", backend="openai", model="judge", base_url="http://127.0.0.1:9/v1",
                         temperature=0.7)
    assert graders.judge_identity(warmer) != graders.judge_identity(judge)
    before = graders.judge_identity(judge)
    original = graders.pairwise_prompt
    monkeypatch.setattr(graders, "pairwise_prompt", lambda m, a, b: [{**x, "content": x["content"] + " Be strict."}
                                                                    for x in original(m, a, b)])
    assert graders.judge_identity(judge) != before  # a changed template never reuses the old verdicts


# ------------------------------------------------------------------------------------------- Arena-style ratings
def test_bradley_terry_scores_are_the_likelihood_maximum_of_the_battles():
    """Battles among three models of known strength: zephyr's Newton fit equals the classic minorise-maximise
    iteration for Bradley-Terry (Hunter 2004), computed here independently, and recovers the strengths."""
    from zephyr.evaluation.arena import ANCHOR, ELO, Battle, fit, ratings

    rng = np.random.default_rng(1)
    strength = {"base": 0.0, "good": 0.8, "weak": -0.5}
    names = list(strength)
    battles = []
    for _ in range(1500):
        a, b = rng.choice(names, 2, replace=False)
        p = 1 / (1 + np.exp(-(strength[a] - strength[b])))
        battles.append(Battle(str(a), str(b), float(rng.random() < p)))
    # minorise-maximise: p_i <- wins_i / sum_j n_ij / (p_i + p_j), a tie as half a win (none here)
    wins = {m: sum(bt.outcome if bt.a == m else 1 - bt.outcome for bt in battles if m in (bt.a, bt.b)) for m in names}
    games = {(x, y): sum({bt.a, bt.b} == {x, y} for bt in battles) for x in names for y in names if x != y}
    p = dict.fromkeys(names, 1.0)
    for _ in range(2000):
        p = {i: wins[i] / sum(games[i, j] / (p[i] + p[j]) for j in names if j != i) for i in names}
    mm = {m: float(np.log(p[m] / p["base"])) for m in names}
    models = sorted(names)
    beta = fit(battles, models, "base", style=False)
    got = dict(zip([m for m in models if m != "base"], beta, strict=False))
    for m in ("good", "weak"):
        assert got[m] == pytest.approx(mm[m], abs=1e-3)
        assert abs(got[m] - strength[m]) < 0.25  # 1500 battles: within sampling error of the truth
    rated = ratings(battles, "base", samples=200)
    assert rated["base"]["rating"] == ANCHOR
    assert rated["good"]["rating"] == pytest.approx(ANCHOR + ELO * got["good"])
    assert rated["weak"]["ci_low"] < rated["weak"]["rating"] < rated["weak"]["ci_high"] < ANCHOR


def test_style_control_takes_out_what_length_buys():
    """A model as good as the baseline whose answers are longer, judged by a judge that likes length: its raw
    rating is well above the baseline's, its style-controlled rating is not."""
    from zephyr.evaluation.arena import ANCHOR, Battle, ratings

    rng = np.random.default_rng(2)
    battles = []
    for _ in range(800):
        extra = rng.normal(400, 300)  # characters more than the baseline's answer
        p = 1 / (1 + np.exp(-(0.9 * np.tanh(extra / 300))))
        battles.append(Battle("verbose", "base", float(rng.random() < p), (extra, 0.0, 0.0, 0.0)))
    raw = ratings(battles, "base", samples=200)["verbose"]
    controlled = ratings(battles, "base", style=True, samples=200)["verbose"]
    assert raw["ci_low"] > ANCHOR + 40
    assert controlled["ci_low"] < ANCHOR + 40 and abs(controlled["rating"] - ANCHOR) < abs(raw["rating"] - ANCHOR) / 2


def test_the_report_rates_every_model_against_the_baseline():
    from zephyr.evaluation.arena import style_features
    from zephyr.evaluation.config import EvalConfig
    from zephyr.evaluation.summary import summarize, table
    from zephyr.recipe import build_configs

    text = "# Title\n- one\n- two\n**bold** text"
    assert style_features(text) == [float(len(text)), 1.0, 2.0, 1.0]
    (cfg,) = build_configs({"questions": "q.jsonl", "models": [{"name": n, "model": n} for n in ("sft", "dpo")],
                            "judge": {"type": "callable", "callable": "m:f"}, "output_dir": "o", "baseline": "sft",
                            "mode": "pairwise", "bootstrap_samples": 100}, (EvalConfig,))
    questions = [Question(f"q{i}", [f"turn {i}"], "misc") for i in range(10)]
    answers = {"sft": {f"q{i}": ["x" * (5 + i)] for i in range(10)}, "dpo": {f"q{i}": ["y" * (9 + 2 * i)]
                                                                            for i in range(10)}}
    outcomes = {"dpo": {f"q{i}": [w] for i, w in enumerate([1, 1, 0.5, 1, 0, 1, 1, 0.5, 1, 0])}}
    results = summarize(cfg, questions, None, outcomes, None, answers)
    arena = results["arena"]
    assert arena["battles"] == 10 and set(arena["ratings"]) == {"sft", "dpo"}
    assert arena["ratings"]["sft"]["rating"] == 1000.0 and arena["ratings"]["dpo"]["rating"] > 1000
    assert f"dpo {arena['ratings']['dpo']['rating']:.0f} [" in table(results)


def test_questions_load_in_arena_hard_and_alpaca_eval_layouts(tmp_path):
    arena = tmp_path / "question.jsonl"
    arena.write_text("".join(json.dumps(r) + "\n" for r in [
        {"uid": "bfdf7a9c", "category": "hard_prompt", "cluster": "Python", "turns": [{"content": "Write a parser."}]},
        {"question_id": "q2", "category": "creative_writing", "turns": [{"content": "A poem."}]}]))
    got = load_questions(arena)
    assert [(q.question_id, q.turns, q.category) for q in got] == [
        ("bfdf7a9c", ["Write a parser."], "hard_prompt"), ("q2", ["A poem."], "creative_writing")]
    alpaca = tmp_path / "alpaca_eval.json"
    alpaca.write_text(json.dumps([{"instruction": "Name a color.", "dataset": "helpful_base", "output": "Red.",
                                   "generator": "gpt4"}, {"instruction": "Add 2 and 2.", "dataset": "vicuna"}]))
    got = load_questions(alpaca)
    assert [(q.question_id, q.turns, q.category) for q in got] == [
        ("0", ["Name a color."], "helpful_base"), ("1", ["Add 2 and 2."], "vicuna")]
    alpaca.write_text(json.dumps({"instruction": "not a list"}))
    with pytest.raises(QuestionError, match="alpaca_eval.json: expected a JSON list of questions, got dict"):
        load_questions(alpaca)
    arena.write_text(json.dumps({"uid": "x", "turns": [{"text": "no content key"}]}) + "\n")
    with pytest.raises(QuestionError, match="question.jsonl:1: expected question_id and turns"):
        load_questions(arena)
