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
and is skipped on the next run while the recipe is unchanged. `--from STAGE` reruns that stage and the ones
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


def is_done(folder: Path, digest: str) -> bool:
    marker = folder / MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("hash") == digest


def mark_done(folder: Path, name: str, digest: str, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"stage": name, "hash": digest, "seconds": round(seconds, 1),
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
    for name in order:
        if only and name != only:
            continue
        stage = stages[name]
        digest = stage_hash(stage)
        folder = stage_output(name, stage, spec["vars"])
        if name not in forced and is_done(folder, digest):
            logger.info("stage %s: already complete in %s (skipped; --from %s reruns it)", name, folder, name)
            continue
        logger.info("stage %s: starting (outputs in %s)", name, folder)
        t0 = time.time()
        run_stage(name, stage, force=name in forced)
        timings[name] = time.time() - t0
        mark_done(folder, name, digest, timings[name])
        logger.info("stage %s: done in %.1fs", name, timings[name])
    return {"root": spec["vars"]["root"], "seed": spec["vars"]["seed"], "seconds": timings}


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
