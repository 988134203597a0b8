"""`zephyr eval`: answer the questions with every model, grade, and report with confidence intervals.

Answers and grades are stored as they are made (the AIF record stores), keyed by question, turn and a hash of
the model's and the judge's settings: an interrupted eval resumes, and adding a model grades only that one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zephyr.evaluation.config import EvalConfig
from zephyr.evaluation.graders import Grader
from zephyr.evaluation.questions import Question, load_questions
from zephyr.evaluation.stats import bootstrap_mean, paired_difference
from zephyr.inference.backends import ChatRequest, make_backend
from zephyr.inference.settings import GeneratorConfig
from zephyr.inference.store import RecordStore

logger = logging.getLogger("zephyr.eval")


def answer_questions(cfg: GeneratorConfig, questions: list[Question], store: RecordStore) -> dict[str, list[str]]:
    """Every turn of every question answered by one model, multi-turn conversations carried forward."""
    h = cfg.settings_hash()
    key = lambda q, t: f"{q.question_id}|{t}|{cfg.name}|{h}"  # noqa: E731
    todo = [q for q in questions if any(key(q, t) not in store for t in range(len(q.turns)))]
    if todo:
        backend = make_backend(cfg)
        for turn in range(max(len(q.turns) for q in todo)):
            active = [q for q in todo if len(q.turns) > turn and key(q, turn) not in store]
            size = cfg.batch_size if cfg.backend != "openai" else max(cfg.concurrency * 4, 1)
            for start in tqdm(range(0, len(active), size), desc=f"Answering turn {turn + 1} with {cfg.name}",
                              unit="batch", disable=not active):
                chunk = active[start : start + size]
                requests = [ChatRequest(history(q, turn, store, key), cfg.temperature, cfg.top_p, cfg.max_new_tokens)
                            for q in chunk]
                results = backend.complete(requests, seed=cfg.seed + 1000 * turn + start)
                store.append({"key": key(q, turn), "question_id": q.question_id, "turn": turn, "model": cfg.name,
                              "answer": r.text or "", "failure": r.failure} for q, r in zip(chunk, results, strict=True))
        del backend
    return {q.question_id: [store.get(key(q, t))["answer"] for t in range(len(q.turns))] for q in questions}


def history(q: Question, turn: int, store: RecordStore, key) -> list[dict[str, str]]:
    messages = []
    for t in range(turn):
        messages += [{"role": "user", "content": q.turns[t]},
                     {"role": "assistant", "content": store.get(key(q, t))["answer"]}]
    return messages + [{"role": "user", "content": q.turns[turn]}]


def conversation(q: Question, answers: list[str], turn: int) -> list[dict[str, str]]:
    messages = []
    for t in range(turn):
        messages += [{"role": "user", "content": q.turns[t]}, {"role": "assistant", "content": answers[t]}]
    return messages + [{"role": "user", "content": q.turns[turn]}]


def grade_single(cfg: EvalConfig, grader: Grader, questions, answers, store: RecordStore) -> dict[str, dict]:
    """Per model: question id -> list of per-turn grades (None = the grader gave none)."""
    judge_hash = cfg.judge.settings_hash()
    grades: dict[str, dict[str, list]] = {}
    for m in cfg.models:
        key = lambda q, t, m=m: f"single|{q.question_id}|{t}|{m.settings_hash()}|{judge_hash}"  # noqa: E731
        items = [(q, t) for q in questions for t in range(len(q.turns)) if key(q, t) not in store]
        if items:
            logger.info("grading %d answers of %s", len(items), m.name)
            scores = grader.single([(conversation(q, answers[m.name][q.question_id], t),
                                     answers[m.name][q.question_id][t],
                                     q.reference[t] if t < len(q.reference) else None) for q, t in items])
            store.append({"key": key(q, t), "score": s} for (q, t), s in zip(items, scores, strict=True))
        grades[m.name] = {q.question_id: [store.get(key(q, t))["score"] for t in range(len(q.turns))]
                          for q in questions}
    return grades


def grade_pairwise(cfg: EvalConfig, grader: Grader, questions, answers, store: RecordStore) -> dict[str, dict]:
    """Per non-baseline model: question id -> list of per-turn outcomes (1 win, 0.5 tie, 0 loss)."""
    base = next(m for m in cfg.models if m.name == cfg.baseline)
    judge_hash = cfg.judge.settings_hash()
    outcomes = {}
    for m in cfg.models:
        if m.name == cfg.baseline:
            continue
        pair = f"{m.settings_hash()}|{base.settings_hash()}"
        key = lambda q, t, pair=pair: f"pair|{q.question_id}|{t}|{pair}|{judge_hash}"  # noqa: E731
        items = [(q, t) for q in questions for t in range(len(q.turns)) if key(q, t) not in store]
        if items:
            logger.info("pairwise judging of %d answers: %s vs %s", len(items), m.name, base.name)
            results = grader.pairwise([(conversation(q, answers[m.name][q.question_id], t),
                                        answers[m.name][q.question_id][t], answers[base.name][q.question_id][t])
                                       for q, t in items])
            store.append({"key": key(q, t), "outcome": o} for (q, t), o in zip(items, results, strict=True))
        outcomes[m.name] = {q.question_id: [store.get(key(q, t))["outcome"] for t in range(len(q.turns))]
                            for q in questions}
    return outcomes


def per_question(values: dict[str, list]) -> dict[str, float]:
    """Mean over a question's turns; a turn the grader could not score counts as the lowest grade (1)."""
    return {qid: sum(1.0 if v is None else v for v in turns) / len(turns) for qid, turns in values.items()}


def summarize(cfg: EvalConfig, questions, grades, outcomes, margins) -> dict[str, Any]:
    boot = {"samples": cfg.bootstrap_samples, "confidence": cfg.confidence, "seed": cfg.seed}
    results: dict[str, Any] = {"questions": len(questions), "bootstrap": boot, "models": {}}
    category = {q.question_id: q.category for q in questions}
    ids = [q.question_id for q in questions]
    for m in cfg.models:
        entry: dict[str, Any] = {"model": m.model}
        if grades:
            scores = per_question(grades[m.name])
            entry["score"] = bootstrap_mean([scores[i] for i in ids], **_boot(cfg)).as_dict()
            entry["ungraded_turns"] = sum(v is None for turns in grades[m.name].values() for v in turns)
            by_cat = defaultdict(list)
            for i in ids:
                by_cat[category[i]].append(scores[i])
            entry["categories"] = {c: bootstrap_mean(v, **_boot(cfg)).as_dict() for c, v in sorted(by_cat.items())}
            if cfg.baseline and m.name != cfg.baseline:
                base = per_question(grades[cfg.baseline])
                diff = paired_difference([scores[i] for i in ids], [base[i] for i in ids], **_boot(cfg))
                entry["score_minus_baseline"] = {**diff.as_dict(), "excludes_zero": diff.excludes_zero()}
        if outcomes and m.name in outcomes:
            wins = per_question(outcomes[m.name])
            entry["win_rate_vs_baseline"] = bootstrap_mean([wins[i] for i in ids], **_boot(cfg)).as_dict()
        results["models"][m.name] = entry
    if margins is not None:
        est = bootstrap_mean([1.0 if x > 0 else 0.0 for x in margins], **_boot(cfg))
        results["reward_accuracy"] = {**est.as_dict(), "mean_margin": sum(margins) / len(margins)}
    return results


def _boot(cfg: EvalConfig) -> dict[str, Any]:
    return {"samples": cfg.bootstrap_samples, "confidence": cfg.confidence, "seed": cfg.seed}


def table(results: dict[str, Any]) -> str:
    level = int(results["bootstrap"]["confidence"] * 100)
    lines = [f"| model | score (1-10) [{level}% CI] | vs baseline [{level}% CI] | win rate vs baseline |",
             "|---|---|---|---|"]
    for name, e in results["models"].items():
        score = _fmt(e.get("score"))
        diff = _fmt(e.get("score_minus_baseline"), signed=True)
        win = _fmt(e.get("win_rate_vs_baseline"))
        lines.append(f"| {name} | {score} | {diff} | {win} |")
    categories = sorted({c for e in results["models"].values() for c in e.get("categories", {})})
    if categories:
        lines += ["", "| model | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
        for name, e in results["models"].items():
            lines.append(f"| {name} | " + " | ".join(f"{e['categories'][c]['mean']:.2f}" for c in categories) + " |")
    if "reward_accuracy" in results:
        r = results["reward_accuracy"]
        lines += ["", f"Reward accuracy on held-out pairs: {_fmt(r)} (mean margin {r['mean_margin']:.3f})"]
    return "\n".join(lines)


def _fmt(e: dict | None, signed: bool = False) -> str:
    if not e:
        return "-"
    sign = "+" if signed else ""
    return f"{e['mean']:{sign}.2f} [{e['ci_low']:{sign}.2f}, {e['ci_high']:{sign}.2f}]"


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    questions = load_questions(cfg.questions)
    qhash = hashlib.sha256(Path(cfg.questions).read_bytes()).hexdigest()[:12]
    store = RecordStore(out / f"eval_records.{qhash}.jsonl")
    answers = {m.name: answer_questions(m, questions, store) for m in cfg.models}
    grader = Grader(cfg.judge)
    grades = grade_single(cfg, grader, questions, answers, store) if cfg.mode in ("single", "both") else None
    outcomes = grade_pairwise(cfg, grader, questions, answers, store) if cfg.mode in ("pairwise", "both") else None
    margins = None
    if cfg.reward_accuracy:
        from zephyr.evaluation.reward_accuracy import reward_margins

        margins = reward_margins(cfg.reward_accuracy)
    results = summarize(cfg, questions, grades, outcomes, margins)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table(results) + "\n")
    with open(out / "answers.jsonl", "w") as f:
        for q in questions:
            f.write(json.dumps({"question_id": q.question_id, "category": q.category, "turns": q.turns,
                                "answers": {m: answers[m][q.question_id] for m in answers},
                                "grades": {m: grades[m][q.question_id] for m in grades} if grades else None},
                               ensure_ascii=False) + "\n")
    if grades:
        from zephyr.evaluation.plot import plot_scores

        plot_scores(results, out / "scores.png")
    logger.info("eval results (%d questions):\n%s\nwritten to %s", len(questions), table(results), out)
    return results
