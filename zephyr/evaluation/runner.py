"""`zephyr eval`: answer the questions with every model, grade, and report with confidence intervals.

Answers and grades are stored as they are made (the AIF record stores), keyed by question, turn and a hash of
the model's and the judge's settings: an interrupted eval resumes, and adding a model grades only that one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zephyr.evaluation.config import EvalConfig
from zephyr.evaluation.graders import Grader, judge_identity, position_consistent
from zephyr.evaluation.questions import Question, load_questions
from zephyr.evaluation.summary import summarize, table
from zephyr.inference.backends import ChatRequest, make_backend
from zephyr.inference.failures import FailureLog, check_missing
from zephyr.inference.settings import GeneratorConfig
from zephyr.inference.store import RecordStore, parse_shard, read_stores, shard_suffix

logger = logging.getLogger("zephyr.eval")


def answer_questions(cfg: GeneratorConfig, questions: list[Question], store: RecordStore,
                     failures: FailureLog) -> dict[str, list[str | None]]:
    """Every turn of every question answered by one model, multi-turn conversations carried forward. A turn
    whose request failed is None, and so are the later turns of its question."""
    h = cfg.settings_hash()
    key = lambda q, t: f"{q.question_id}|{t}|{cfg.name}|{h}"  # noqa: E731
    todo = [q for q in questions if any(key(q, t) not in store for t in range(len(q.turns)))]
    if todo:
        backend = make_backend(cfg)
        for turn in range(max(len(q.turns) for q in todo)):
            # a turn is asked once every earlier turn of its question has an answer
            active = [q for q in todo if len(q.turns) > turn and key(q, turn) not in store
                      and all(key(q, t) in store for t in range(turn))]
            size = cfg.batch_size if cfg.backend != "openai" else max(cfg.concurrency * 4, 1)
            for start in tqdm(range(0, len(active), size), desc=f"Answering turn {turn + 1} with {cfg.name}",
                              unit="batch", disable=not active):
                chunk = active[start : start + size]
                requests = [ChatRequest(history(q, turn, store, key), cfg.temperature, cfg.top_p, cfg.max_new_tokens)
                            for q in chunk]
                results = backend.complete(requests, seed=cfg.seed + 1000 * turn + start)
                good = []
                for q, r in zip(chunk, results, strict=True):
                    if r.failure or r.text is None:  # an empty text from a local model is its answer
                        failures.add("answer", key(q, turn), r.failure or "no answer")
                    else:
                        good.append({"key": key(q, turn), "question_id": q.question_id, "turn": turn,
                                     "model": cfg.name, "answer": r.text})
                store.append(good)
        del backend
    return {q.question_id: [store.get(key(q, t))["answer"] if key(q, t) in store else None
                            for t in range(len(q.turns))] for q in questions}


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


def grade_single(cfg: EvalConfig, grader: Grader, questions, answers, store: RecordStore,
                 failures: FailureLog) -> dict[str, dict]:
    """Per model: question id -> list of per-turn grades; None where the answer or its grade is missing."""
    judge_hash = judge_identity(cfg.judge)
    grades: dict[str, dict[str, list]] = {}
    for m in cfg.models:
        key = lambda q, t, m=m: f"single|{q.question_id}|{t}|{m.settings_hash()}|{judge_hash}"  # noqa: E731
        items = [(q, t) for q in questions for t in range(len(q.turns))
                 if key(q, t) not in store and answers[m.name][q.question_id][t] is not None]
        if items:
            logger.info("grading %d answers of %s", len(items), m.name)
            scores = grader.single([(conversation(q, answers[m.name][q.question_id], t),
                                     answers[m.name][q.question_id][t],
                                     q.reference[t] if t < len(q.reference) else None) for q, t in items])
            keep(items, scores, key, "score", store, failures)
        grades[m.name] = stored(questions, key, "score", store)
    return grades


def keep(items, values, key, field: str, store: RecordStore, failures: FailureLog) -> None:
    """Store the judge's values; one it could not give (None) is a failure for the next run, never a result."""
    for (q, t), value in zip(items, values, strict=True):
        if value is None:
            failures.add(field, key(q, t), f"no usable {field} from the judge after its retries")
    store.append({"key": key(q, t), field: v} for (q, t), v in zip(items, values, strict=True) if v is not None)


def stored(questions, key, field: str, store: RecordStore) -> dict[str, list]:
    """Question id -> per-turn stored values (None where missing)."""
    return {q.question_id: [store.get(key(q, t))[field] if key(q, t) in store else None
                            for t in range(len(q.turns))] for q in questions}


def pair_keys(cfg: EvalConfig, model) -> Any:
    """The store key of a pairwise judgment of `model` as a function of (question, turn): both models' settings
    and the judge's identity in it."""
    base = next(m for m in cfg.models if m.name == cfg.baseline)
    pair, judge = f"{model.settings_hash()}|{base.settings_hash()}", judge_identity(cfg.judge)
    return lambda q, t: f"pair|{q.question_id}|{t}|{pair}|{judge}"


def grade_pairwise(cfg: EvalConfig, grader: Grader, questions, answers, store: RecordStore,
                   failures: FailureLog) -> dict[str, dict]:
    """Per non-baseline model: question id -> list of per-turn outcomes (1 win, 0.5 tie, 0 loss; None where an
    answer or a verdict is missing). The judge's two verdicts are stored with each outcome."""
    base = cfg.baseline
    outcomes = {}
    for m in cfg.models:
        if m.name == base:
            continue
        key = pair_keys(cfg, m)
        items = [(q, t) for q in questions for t in range(len(q.turns)) if key(q, t) not in store
                 and answers[m.name][q.question_id][t] is not None and answers[base][q.question_id][t] is not None]
        if items:
            logger.info("pairwise judging of %d answers: %s vs %s", len(items), m.name, base)
            results = grader.pairwise([(conversation(q, answers[m.name][q.question_id], t),
                                        answers[m.name][q.question_id][t], answers[base][q.question_id][t])
                                       for q, t in items])
            for (q, t), result in zip(items, results, strict=True):
                if result is None:
                    failures.add("outcome", key(q, t), "no usable verdict from the judge after its retries")
            store.append({"key": key(q, t), **result} for (q, t), result in zip(items, results, strict=True)
                         if result is not None)
        outcomes[m.name] = stored(questions, key, "outcome", store)
    return outcomes


def position_consistency(cfg: EvalConfig, questions, store: RecordStore) -> dict[str, dict[str, float]]:
    """Per non-baseline model, the share of judged pairs whose verdict survives swapping the two answers: how
    far the judge's verdicts are about the answers rather than their order."""
    out = {}
    for m in cfg.models:
        if m.name == cfg.baseline:
            continue
        key = pair_keys(cfg, m)
        records = [store.get(key(q, t)) for q in questions for t in range(len(q.turns))]
        judged = [r["verdicts"] for r in records if r and r.get("verdicts")]
        if judged:
            out[m.name] = {"mean": sum(position_consistent(v) for v in judged) / len(judged), "pairs": len(judged)}
    return out


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    questions = load_questions(cfg.questions)
    source = Path(cfg.questions)  # a question file, or a dataset: then its questions as loaded
    content = source.read_bytes() if source.is_file() else json.dumps([vars(q) for q in questions]).encode()
    qhash = hashlib.sha256(content).hexdigest()[:12]
    i, n = parse_shard(cfg.shard)
    suffix = shard_suffix((i, n))
    if n > 1:  # one worker of several (one per GPU): answer and grade its share of the questions, report nothing
        questions = questions[i::n]
    store = RecordStore(out / f"eval_records.{qhash}{suffix}.jsonl")
    if n == 1:  # the merge: what shard workers stored counts as stored here
        shards = read_stores(out.glob(f"eval_records.{qhash}.shard-*.jsonl"))
        store.append(record for key, record in shards.items() if key not in store)
    failures = FailureLog(out / f"failures{suffix}.jsonl")
    answers = {m.name: answer_questions(m, questions, store, failures) for m in cfg.models}
    grader = Grader(cfg.judge)
    single, pairwise = cfg.mode in ("single", "both"), cfg.mode in ("pairwise", "both")
    grades = grade_single(cfg, grader, questions, answers, store, failures) if single else None
    outcomes = grade_pairwise(cfg, grader, questions, answers, store, failures) if pairwise else None
    if n > 1:
        missing, expected = missing_results(questions, answers, grades, outcomes)
        logger.info("eval shard %d/%d done (%d of %d results missing); the run without --shard merges the shards "
                    "and reports", i, n, missing, expected)
        return {"shard": cfg.shard, "missing": missing, "of": expected}
    margins = None
    if cfg.reward_accuracy:
        from zephyr.evaluation.reward_accuracy import reward_margins

        margins = reward_margins(cfg.reward_accuracy)
    results = summarize(cfg, questions, grades, outcomes, margins, answers)
    if outcomes is not None:
        results["judge"] = {"identity": judge_identity(cfg.judge),
                            "position_consistency": position_consistency(cfg, questions, store)}
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
    missing, expected = missing_results(questions, answers, grades, outcomes)
    results["missing"] = {"results": missing, "of": expected, "failures_this_run": dict(failures.reasons)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    note = check_missing("eval answers and grades", missing, expected, failures.reasons, failures.first,
                         cfg.max_failure_rate)
    if note:
        logger.warning(note)
    return results


def missing_results(questions, answers, grades, outcomes) -> tuple[int, int]:
    """(missing, expected) over every answer, grade and verdict the eval asks for."""
    tables = [answers, *(t for t in (grades, outcomes) if t)]
    values = [v for table in tables for per_model in table.values() for turns in per_model.values() for v in turns]
    return sum(v is None for v in values), len(values)
