"""`zephyr run`: the whole recipe, dSFT -> AIF -> dDPO -> eval, from one pipeline file.

A pipeline file names each stage's own recipe plus the overrides that wire the stages together; `${root}`
and `${seed}` in override values are replaced by the pipeline's values, so one file serves every seed:

    root: outputs/tiny
    seed: 42
    tiny_model: {hidden_size: 128}            # optional: build the embedded default into ${root}
    stages:
      sft:  {recipe: recipes/tiny/sft.yaml, overrides: {output_dir: "${root}/sft", seed: "${seed}"}}
      aif:  {recipe: recipes/tiny/aif.yaml, overrides: {output_dir: "${root}/aif"}}
      dpo:  {recipe: recipes/tiny/dpo.yaml, overrides: {...}}
      eval: {recipe: recipes/tiny/eval.yaml, overrides: {...}}

A stage that finished writes `zephyr_stage.json` (with a hash of its resolved recipe) into its output folder
and is skipped on the next run while its recipe is unchanged and no stage before it finished later. `--from STAGE` reruns that stage and the ones
after it; `--only STAGE` runs just one. A stage interrupted midway resumes: training from its last
checkpoint, AIF and eval from their record stores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from zephyr.recipe import RecipeError, read_yaml

logger = logging.getLogger("zephyr.run")

STAGES = ("tiny_model", "sft", "aif", "dpo", "eval")
MARKER = "zephyr_stage.json"


def render(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ${name} in strings (recursively); a string that is exactly one ${name} takes its value's type."""
    if isinstance(value, str):
        whole = re.fullmatch(r"\$\{(\w+)\}", value)
        if whole and whole[1] in variables:
            return variables[whole[1]]
        return re.sub(r"\$\{(\w+)\}", lambda m: str(variables.get(m[1], m[0])), value)
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    return value


def as_override(key: str, value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}={text}"


def load_pipeline(path: str | Path, root: str | None = None, seed: int | None = None) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "pipeline.yaml"
    spec = read_yaml(path)
    unknown = set(spec) - {"root", "seed", "tiny_model", "stages"}
    if unknown:
        raise RecipeError(f"{path}: unknown keys {sorted(unknown)} (expected root, seed, tiny_model, stages)")
    variables = {"root": root or spec.get("root", "outputs"), "seed": seed if seed is not None else spec.get("seed", 42)}
    stages = spec.get("stages") or {}
    bad = set(stages) - set(STAGES)
    if bad:
        raise RecipeError(f"{path}: unknown stages {sorted(bad)} (expected {list(STAGES[1:])})")
    resolved = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict) or "recipe" not in stage:
            raise RecipeError(f"{path}: stage '{name}' needs a 'recipe' (path to the stage's YAML recipe)")
        recipe = Path(stage["recipe"])
        if not recipe.is_absolute() and not recipe.exists():
            recipe = path.parent / recipe.name if (path.parent / recipe.name).exists() else recipe
        resolved[name] = {"recipe": str(recipe), "overrides": render(stage.get("overrides") or {}, variables)}
    tiny = render(spec.get("tiny_model"), variables) if spec.get("tiny_model") is not None else None
    return {"path": str(path), "vars": variables, "tiny_model": tiny, "stages": resolved}


def stage_hash(stage: dict[str, Any]) -> str:
    recipe_text = Path(stage["recipe"]).read_text() if "recipe" in stage else ""
    blob = json.dumps({"recipe": recipe_text, "overrides": stage.get("overrides")}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_output(name: str, stage: dict[str, Any], variables: dict[str, Any]) -> Path:
    if name == "tiny_model":
        return Path(variables["root"])
    out = stage["overrides"].get("output_dir") or read_yaml(stage["recipe"]).get("output_dir")
    if not out:
        raise RecipeError(f"stage {name}: no output_dir in its recipe or overrides")
    return Path(out)


def finished_at(folder: Path, digest: str) -> float | None:
    """When the stage in `folder` finished with this recipe hash, or None if it has not."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    data = json.loads(marker.read_text())
    return data.get("finished_at") if data.get("hash") == digest else None


def mark_done(folder: Path, name: str, digest: str, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"stage": name, "hash": digest, "seconds": round(seconds, 1),
                                             "finished_at": time.time(),
                                             "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


def run_stage(name: str, stage: dict[str, Any], force: bool) -> Any:
    if name == "tiny_model":
        from zephyr.embedded.build import build_tiny_model

        return build_tiny_model(**stage["overrides"])
    from zephyr.stages import aif, dpo, eval as eval_stage, sft  # noqa: I001

    mains = {"sft": sft.main, "aif": aif.main, "dpo": dpo.main, "eval": eval_stage.main}
    overrides = dict(stage["overrides"])
    if force and name in ("sft", "dpo"):
        overrides["resume"] = False  # a forced rerun trains again instead of resuming the finished run
    argv = [stage["recipe"], *(as_override(k, v) for k, v in overrides.items())]
    return mains[name](argv)


def run_pipeline(path: str | Path, start: str | None = None, only: str | None = None, root: str | None = None,
                 seed: int | None = None) -> dict[str, Any]:
    spec = load_pipeline(path, root, seed)
    stages: dict[str, dict[str, Any]] = {}
    if spec["tiny_model"] is not None:
        stages["tiny_model"] = {"overrides": {"out": spec["vars"]["root"], **spec["tiny_model"]}}
    stages.update(spec["stages"])
    order = [s for s in STAGES if s in stages]
    for flag, value in (("--from", start), ("--only", only)):
        if value and value not in order:
            raise RecipeError(f"{flag} {value}: not a stage of this pipeline (stages: {order})")
    forced = set(order[order.index(start):]) if start else {only} if only else set()
    timings = {}
    inputs_time = 0.0  # when the newest earlier stage finished: a stage older than its inputs is stale
    for name in order:
        stage = stages[name]
        digest = stage_hash(stage)
        folder = stage_output(name, stage, spec["vars"])
        done = finished_at(folder, digest)
        if only and name != only:
            inputs_time = max(inputs_time, done or 0.0)
            continue
        if name not in forced and done is not None and done >= inputs_time:
            logger.info("stage %s: already complete in %s (skipped; --from %s reruns it)", name, folder, name)
            inputs_time = done
            continue
        logger.info("stage %s: starting (outputs in %s)", name, folder)
        (folder / MARKER).unlink(missing_ok=True)  # from now on the folder holds a run that has not finished
        t0 = time.time()
        run_stage(name, stage, force=name in forced)
        timings[name] = time.time() - t0
        mark_done(folder, name, digest, timings[name])
        inputs_time = time.time()
        logger.info("stage %s: done in %.1fs", name, timings[name])
    lines = [f"  {name:<10} {timings.get(name, 0):7.1f}s  {stage_output(name, stages[name], spec['vars'])}  "
             f"{key_metrics(name, stage_output(name, stages[name], spec['vars']))}" for name in order]
    logger.info("pipeline summary (stage, seconds this run, outputs, key metrics):\n%s", "\n".join(lines))
    return {"root": spec["vars"]["root"], "seed": spec["vars"]["seed"], "seconds": timings}


def key_metrics(name: str, folder: Path) -> str:
    """One line of the numbers that matter for a finished stage, read from what it wrote."""
    def read(file: str) -> dict[str, Any]:
        path = folder / file
        return json.loads(path.read_text()) if path.is_file() else {}

    if name in ("sft", "dpo"):
        r = read("all_results.json")
        keys = ("train_loss", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins",
                "train_tokens_per_second")
        return ", ".join(f"{k} {r[k]:.3g}" for k in keys if k in r)
    if name == "aif":
        r = read("summary.json")
        return f"{r.get('pairs', 0)} pairs from {r.get('prompts', 0)} prompts, dropped {r.get('dropped') or 'none'}"
    if name == "eval":
        r = read("results.json")
        return "; ".join(f"{m} {e['score']['mean']:.2f} [{e['score']['ci_low']:.2f}, {e['score']['ci_high']:.2f}]"
                         for m, e in r.get("models", {}).items() if "score" in e)
    return ""


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="zephyr run", description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="pipeline YAML, or a folder holding pipeline.yaml")
    parser.add_argument("--from", dest="start", choices=STAGES, help="rerun this stage and the ones after it")
    parser.add_argument("--only", choices=STAGES, help="run only this stage")
    parser.add_argument("--root", help="output root (replaces ${root}); default: the pipeline's root")
    parser.add_argument("--seed", type=int, help="seed (replaces ${seed}); default: the pipeline's seed")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)
    return run_pipeline(args.pipeline, args.start, args.only, args.root, args.seed)
