"""Does a second round of AIF + dDPO beat the first? `zephyr run recipes/tiny/pipeline_rounds.yaml` for several
seeds, each a whole cold process in its own folder, then each seed's held-out scores: dSFT, round 1's dDPO, round
2's, and round 2 - round 1 with its paired 95% bootstrap interval (the eval's own `score_minus_previous_round`),
and the difference pooled over the seeds.

    python benchmarks/rounds.py [--seeds 42 1 2] [--pipeline FILE] [--out outputs/rounds-bench] [--json FILE]

Rerunning resumes: a finished seed is read, not run again (the pipeline skips complete stages).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_seed(pipeline: Path, seed: int, out: Path, rounds: int) -> dict:
    root = out / f"seed-{seed}"
    cmd = [sys.executable, "-m", "zephyr.cli", "run", str(pipeline), "--rounds", str(rounds), "--seed", str(seed),
           "--root", str(root)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}: zephyr run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    results = json.loads((root / "eval" / "results.json").read_text())
    models = results["models"]
    last = f"dpo_r{rounds}"
    return {"seed": seed, "questions": results["questions"],
            "scores": {name: m["score"] for name, m in models.items()},
            "vs_sft": {name: m["score_minus_baseline"] for name, m in models.items() if "score_minus_baseline" in m},
            "vs_previous_round": {name: m["score_minus_previous_round"] for name, m in models.items()
                                  if "score_minus_previous_round" in m},
            "last_round": last}


def pooled_difference(out: Path, seeds: list[int], last: str, previous: str) -> dict:
    """last - previous per held-out question, averaged over the seeds that held it out (the rounds pipeline draws
    each seed's split with that seed; the demo's split is the same for every seed), with a paired bootstrap over
    the questions. Grades from each eval's answers.jsonl; `changed`: (seed, question) answers that differ between
    the two rounds."""
    from zephyr.evaluation.stats import bootstrap_mean

    diffs: dict[str, list[float]] = {}
    changed = 0
    for seed in seeds:
        for line in (out / f"seed-{seed}" / "eval" / "answers.jsonl").read_text().splitlines():
            row = json.loads(line)
            grade = {name: sum(g) / len(g) for name, g in row["grades"].items()}
            diffs.setdefault(row["question_id"], []).append(grade[last] - grade[previous])
            changed += row["answers"][last] != row["answers"][previous]
    est = bootstrap_mean([sum(d) / len(d) for d in diffs.values()], samples=2000, seed=0)
    return {**est.as_dict(), "excludes_zero": est.excludes_zero(), "changed": changed,
            "answers": sum(len(d) for d in diffs.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--pipeline", type=Path, default=ROOT / "recipes" / "tiny" / "pipeline_rounds.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "rounds-bench")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    runs = [run_seed(args.pipeline, seed, args.out, args.rounds) for seed in args.seeds]
    names = list(runs[0]["scores"])
    print("| seed | " + " | ".join(names) + " | " + " | ".join(
        f"{n} - {runs[0]['vs_previous_round'][n]['previous']}" for n in runs[0]["vs_previous_round"]) + " |")
    print("|---|" + "---|" * (len(names) + len(runs[0]["vs_previous_round"])))
    for r in runs:
        scores = " | ".join(f"{r['scores'][n]['mean']:.2f}" for n in names)
        diffs = " | ".join(f"{d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
                           for d in r["vs_previous_round"].values())
        print(f"| {r['seed']} | {scores} | {diffs} |")
    pooled = pooled_difference(args.out, args.seeds, f"dpo_r{args.rounds}",
                               runs[0]["vs_previous_round"][f"dpo_r{args.rounds}"]["previous"])
    print(f"averaged over the seeds, {pooled['n']} questions: {pooled['mean']:+.3f} [{pooled['ci_low']:+.3f}, "
          f"{pooled['ci_high']:+.3f}]; answers that differ between the rounds: {pooled['changed']} of "
          f"{pooled['answers']}")
    final = [r["vs_previous_round"][r["last_round"]] for r in runs]
    better = sum(d["mean"] > 0 for d in final)
    sure = sum(d["ci_low"] > 0 for d in final)
    worse = sum(d["ci_high"] < 0 for d in final)
    print(f"round {args.rounds} beats round {args.rounds - 1} on the mean in {better} of {len(runs)} seeds; its 95% "
          f"interval is above zero in {sure} and below zero in {worse}")
    if args.json:
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "rounds": args.rounds, "runs": runs,
                                         "pooled_last_minus_previous": pooled}, indent=2))


if __name__ == "__main__":
    main()
