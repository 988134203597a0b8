"""The eval report: every estimate from the stored answers, grades and verdicts (scores, the paired difference to
the baseline and to the round before, win rates raw and at equal length, answer lengths, Arena-style ratings),
as `results.json` and the `results.md` table."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np

from zephyr.evaluation.arena import STYLE_FEATURES, Battle, ratings, style_features
from zephyr.evaluation.config import EvalConfig
from zephyr.evaluation.stats import bootstrap_mean, length_controlled_win_rate, paired_difference


def per_question(values: dict[str, list]) -> dict[str, float]:
    """Mean over a question's turns, for the questions whose every turn has a value: a question with a missing
    turn is left out (never scored as if the missing turn had some grade)."""
    return {qid: sum(turns) / len(turns) for qid, turns in values.items() if all(v is not None for v in turns)}


def length_lines(cfg: EvalConfig, answers: dict[str, dict[str, list]], name: str) -> dict[str, Any]:
    """How long a model's answers are (characters, every answered turn) and, against the baseline on the turns
    both answered, how much longer: DPO is known to lengthen answers, and a judge to reward length."""
    own = [len(a) for turns in answers[name].values() for a in turns if a is not None]
    entry: dict[str, Any] = {"mean": float(np.mean(own)) if own else None, "median": float(np.median(own)) if own
                             else None, "answers": len(own)}
    if cfg.baseline and name != cfg.baseline:
        base = answers[cfg.baseline]
        diffs = [len(a) - len(b) for qid, turns in answers[name].items() for a, b in zip(turns, base[qid], strict=True)
                 if a is not None and b is not None]
        if diffs:
            entry["minus_baseline"] = bootstrap_mean(diffs, **_boot(cfg)).as_dict()
    return entry


def lc_win_rate(cfg: EvalConfig, fought: list[Battle], name: str) -> dict[str, Any] | None:
    """The win rate against the baseline at equal answer length (AlpacaEval 2's length control), over every
    judged turn: the outcome of each of the model's battles and its length difference (the first style feature)."""
    own = [b for b in fought if b.a == name]
    if len(own) < 2:
        return None
    est = length_controlled_win_rate([b.outcome for b in own], [b.style[0] for b in own], **_boot(cfg))
    return {**est.as_dict(), "judged_turns": len(own)}


def battles(cfg: EvalConfig, answers: dict[str, dict[str, list]], outcomes: dict[str, dict]) -> list[Battle]:
    """Every judged turn as a battle of the model against the baseline, with the style difference of the two
    answers."""
    base = answers[cfg.baseline]
    out = []
    for name, per_question in outcomes.items():
        for qid, turns in per_question.items():
            for t, outcome in enumerate(turns):
                mine, theirs = answers[name][qid][t], base[qid][t]
                if outcome is not None and mine is not None and theirs is not None:
                    style = tuple(x - y for x, y in zip(style_features(mine), style_features(theirs), strict=True))
                    out.append(Battle(name, cfg.baseline, outcome, style))
    return out


def arena(cfg: EvalConfig, fought: list[Battle]) -> dict[str, Any] | None:
    """Bradley-Terry ratings on the Elo scale (baseline 1000), raw and style-controlled (zephyr/evaluation/arena.py)."""
    if len(fought) < 2:
        return None
    boot = {"samples": min(cfg.bootstrap_samples, 1000), "confidence": cfg.confidence, "seed": cfg.seed}
    return {"ratings": ratings(fought, cfg.baseline, **boot),
            "style_controlled": ratings(fought, cfg.baseline, style=True, **boot),
            "style_features": list(STYLE_FEATURES), "battles": len(fought)}


def summarize(cfg: EvalConfig, questions, grades, outcomes, margins,
              answers: dict[str, dict[str, list]] | None = None) -> dict[str, Any]:
    """Every estimate from successful records only; each model says how many questions it is missing."""
    boot = {"samples": cfg.bootstrap_samples, "confidence": cfg.confidence, "seed": cfg.seed}
    results: dict[str, Any] = {"questions": len(questions), "bootstrap": boot, "models": {}}
    category = {q.question_id: q.category for q in questions}
    ids = [q.question_id for q in questions]
    fought = battles(cfg, answers, outcomes) if outcomes and answers is not None else []
    for m in cfg.models:
        entry: dict[str, Any] = {"model": m.model}
        if grades:
            scores = per_question(grades[m.name])
            have = [i for i in ids if i in scores]
            entry["missing_questions"] = len(ids) - len(have)
            entry["ungraded_turns"] = sum(v is None for turns in grades[m.name].values() for v in turns)
            if have:
                entry["score"] = bootstrap_mean([scores[i] for i in have], **_boot(cfg)).as_dict()
                by_cat = defaultdict(list)
                for i in have:
                    by_cat[category[i]].append(scores[i])
                entry["categories"] = {c: bootstrap_mean(v, **_boot(cfg)).as_dict() for c, v in sorted(by_cat.items())}
            if cfg.baseline and m.name != cfg.baseline:
                base = per_question(grades[cfg.baseline])
                both = [i for i in have if i in base]  # paired: the questions both models have grades for
                if both:
                    diff = paired_difference([scores[i] for i in both], [base[i] for i in both], **_boot(cfg))
                    entry["score_minus_baseline"] = {**diff.as_dict(), "excludes_zero": diff.excludes_zero(),
                                                     "questions": len(both)}
            earlier = previous_round(m.name, [x.name for x in cfg.models])
            if earlier:  # iterative rounds (zephyr/rounds.py): did this round improve on the one before?
                before = per_question(grades[earlier])
                both = [i for i in have if i in before]
                if both:
                    diff = paired_difference([scores[i] for i in both], [before[i] for i in both], **_boot(cfg))
                    entry["score_minus_previous_round"] = {**diff.as_dict(), "excludes_zero": diff.excludes_zero(),
                                                           "previous": earlier, "questions": len(both)}
        if outcomes and m.name in outcomes:
            wins = per_question(outcomes[m.name])
            if wins:
                entry["win_rate_vs_baseline"] = {**bootstrap_mean([wins[i] for i in ids if i in wins],
                                                                  **_boot(cfg)).as_dict(), "questions": len(wins)}
            entry["missing_verdicts"] = len(ids) - len(wins)
            if fought:
                lc = lc_win_rate(cfg, fought, m.name)
                if lc is not None:
                    entry["lc_win_rate_vs_baseline"] = lc
        if answers is not None:
            entry["answer_length"] = length_lines(cfg, answers, m.name)
        results["models"][m.name] = entry
    if fought:
        rated = arena(cfg, fought)
        if rated:
            results["arena"] = rated
    if margins is not None:
        est = bootstrap_mean([1.0 if x > 0 else 0.0 for x in margins], **_boot(cfg))
        results["reward_accuracy"] = {**est.as_dict(), "mean_margin": sum(margins) / len(margins)}
    return results


def previous_round(name: str, names: list[str]) -> str | None:
    """`dpo_r3` -> `dpo_r2`, `dpo_r2` -> `dpo` (the names zephyr/rounds.py gives later rounds), when present."""
    found = re.fullmatch(r"(.+)_r(\d+)", name)
    if not found or int(found[2]) < 2:
        return None
    earlier = found[1] if found[2] == "2" else f"{found[1]}_r{int(found[2]) - 1}"
    return earlier if earlier in names else None


def _boot(cfg: EvalConfig) -> dict[str, Any]:
    return {"samples": cfg.bootstrap_samples, "confidence": cfg.confidence, "seed": cfg.seed}


def table(results: dict[str, Any]) -> str:
    level = int(results["bootstrap"]["confidence"] * 100)
    lines = [f"| model | score (1-10) [{level}% CI] | vs baseline [{level}% CI] | win rate vs baseline | "
             "length-controlled win rate | answer length (chars) |", "|---|---|---|---|---|---|"]
    for name, e in results["models"].items():
        score = _fmt(e.get("score"))
        diff = _fmt(e.get("score_minus_baseline"), signed=True)
        win = _fmt(e.get("win_rate_vs_baseline"))
        lc = _fmt(e.get("lc_win_rate_vs_baseline"))
        lines.append(f"| {name} | {score} | {diff} | {win} | {lc} | {_length(e.get('answer_length'))} |")
    categories = sorted({c for e in results["models"].values() for c in e.get("categories", {})})
    if categories:
        lines += ["", "| model | " + " | ".join(categories) + " |", "|---|" + "---|" * len(categories)]
        for name, e in results["models"].items():
            lines.append(f"| {name} | " + " | ".join(f"{e['categories'][c]['mean']:.2f}" for c in categories) + " |")
    missing = {name: (e.get("missing_questions", 0), e.get("missing_verdicts", 0))
               for name, e in results["models"].items()}
    if any(a or b for a, b in missing.values()):
        lines += ["", "Missing (failed or ungraded, left out of the estimates above): " + "; ".join(
            f"{name} {a} question(s) without a full grade, {b} without a verdict" for name, (a, b) in missing.items())]
    rounds = [(name, e["score_minus_previous_round"]) for name, e in results["models"].items()
              if "score_minus_previous_round" in e]
    if rounds:
        lines += ["", f"Each round against the one before ({level}% CI of the paired difference): " + "; ".join(
            f"{name} - {d['previous']} {_fmt(d, signed=True)}" for name, d in rounds)]
    if "arena" in results:
        rated = results["arena"]
        lines += ["", f"Arena-style ratings (Bradley-Terry, Elo scale, baseline 1000, {level}% CI; style-controlled: "
                  "answer length and markdown as covariates): " + "; ".join(
                      f"{name} {r['rating']:.0f} [{r['ci_low']:.0f}, {r['ci_high']:.0f}], style-controlled "
                      f"{rated['style_controlled'][name]['rating']:.0f}"
                      for name, r in rated["ratings"].items())]
    judge = results.get("judge")
    if judge and judge.get("position_consistency"):
        lines += ["", f"Judge {judge['identity']}: verdicts that survive swapping the answers (position consistency): "
                  + "; ".join(f"{name} {c['mean']:.2f} of {c['pairs']} pairs"
                              for name, c in judge["position_consistency"].items())]
    if "reward_accuracy" in results:
        r = results["reward_accuracy"]
        lines += ["", f"Reward accuracy on held-out pairs: {_fmt(r)} (mean margin {r['mean_margin']:.3f})"]
    return "\n".join(lines)


def _length(e: dict | None) -> str:
    if not e or e.get("mean") is None:
        return "-"
    vs = e.get("minus_baseline")
    return f"{e['mean']:.1f}" + (f" ({vs['mean']:+.1f} [{vs['ci_low']:+.1f}, {vs['ci_high']:+.1f}])" if vs else "")


def _fmt(e: dict | None, signed: bool = False) -> str:
    if not e:
        return "-"
    sign = "+" if signed else ""
    return f"{e['mean']:{sign}.2f} [{e['ci_low']:{sign}.2f}, {e['ci_high']:{sign}.2f}]"
