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

Stages run in the order of STAGES below. `rounds: N` (or `--rounds N`) repeats AIF and dDPO on the newest
policy, each round in its own folders, before the eval (zephyr/rounds.py).

Every stage runs as its own process (`zephyr/launch.py`), its full log in `<stage output>/stage.log` while the
terminal shows it. Training stages take launch settings: `launch: {accelerate_config: zero3, num_processes: 8}`
at the top of the file (all training stages) or in a stage, or `zephyr run PIPELINE --launch CONFIG`; the
default is one process. Before the first stage starts, every stage's recipe is resolved and checked (unknown
keys, types, missing local files, paths no earlier stage writes); `--dry-run` prints that plan and stops.

A stage that finished writes `zephyr_stage.json` (with a hash of its resolved recipe) into its output folder
and is skipped on the next run while its recipe is unchanged and no stage before it finished later. `--from STAGE` reruns that stage and the ones
after it; `--only STAGE` runs just one. A stage interrupted midway resumes: training from its last
checkpoint, AIF and eval from their record stores. SIGTERM or Ctrl-C reaches the running stage, which saves
and exits; `kill -9` of `zephyr run` takes the stage and its ranks down with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zephyr import plan
from zephyr.launch import (
    TRAINING,
    LaunchSettings,
    Parallel,
    Slurm,
    run_logged,
    shard_workers,
    stage_command,
    stage_commands,
    visible_gpus,
)
from zephyr.recipe import RecipeError, read_yaml
from zephyr.rounds import Rounds, add_rounds, eval_models_override
from zephyr.run_lock import locked
from zephyr.stages import STAGES as STAGE_TABLE

logger = logging.getLogger("zephyr.run")

# In the order they run, whatever the order in the file (a file written by yaml.safe_dump has its keys sorted).
# A reward model (rm) comes before aif, whose `judge: reward_model` may read it; the preference stages after dpo
# are alternatives to it (orpo needs no sft before it).
STAGES = ("tiny_model", *STAGE_TABLE)  # the embedded default first, then the table's order
MARKER = "zephyr_stage.json"
TINY_MODEL_FLAGS = {"hidden_size": "--hidden-size", "num_layers": "--num-layers", "seed": "--seed",
                    "tokenizer": "--tokenizer", "eval_fraction": "--eval-fraction", "split_seed": "--split-seed"}


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


def load_pipeline(path: str | Path, root: str | None = None, seed: int | None = None,
                  rounds: int | None = None) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "pipeline.yaml"
    if not path.is_file():
        raise RecipeError(f"{path}: no such pipeline file")
    spec = read_yaml(path)
    unknown = set(spec) - {"root", "seed", "tiny_model", "stages", "launch", "rounds"}
    if unknown:
        raise RecipeError(f"{path}: unknown keys {sorted(unknown)} (expected root, seed, tiny_model, launch, rounds, "
                          "stages)")
    variables = {"root": root or spec.get("root", "outputs"), "seed": seed if seed is not None else spec.get("seed", 42)}
    stages = spec.get("stages") or {}
    bad = set(stages) - set(STAGES)
    if bad:
        raise RecipeError(f"{path}: unknown stages {sorted(bad)} (expected {list(STAGES[1:])})")
    resolved = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict) or "recipe" not in stage:
            raise RecipeError(f"{path}: stage '{name}' needs a 'recipe' (path to the stage's YAML recipe)")
        extra = set(stage) - {"recipe", "overrides", "launch"}
        if extra:
            raise RecipeError(f"{path}: stage '{name}': unknown keys {sorted(extra)} (expected recipe, overrides, "
                              "launch)")
        recipe = Path(stage["recipe"])
        if not recipe.is_absolute() and not recipe.exists():  # relative to the pipeline file's folder
            recipe = next((c for c in (path.parent / recipe, path.parent / recipe.name) if c.is_file()), recipe)
        if not recipe.is_file():
            raise RecipeError(f"{path}: stage '{name}': recipe {stage['recipe']}: no such file")
        launch = LaunchSettings.parse(render(stage.get("launch"), variables), f"{path}: stage '{name}'")
        if launch is not None and name not in TRAINING and (name not in ("aif", "eval") or launch != LaunchSettings(
                num_processes=launch.num_processes)):
            raise RecipeError(f"{path}: stage '{name}': launch settings apply to training stages ({', '.join(TRAINING)}); "
                              "aif and eval take only num_processes (workers, one per GPU)")
        resolved[name] = {"recipe": str(recipe), "overrides": render(stage.get("overrides") or {}, variables),
                          # what the stage's hash reads: the overrides with ${root} left as it is
                          "identity": render(stage.get("overrides") or {}, {**variables, "root": "${root}"}),
                          "launch": launch}
    order = [s for s in STAGES if s in resolved]
    repeat = Rounds.parse(spec.get("rounds"), str(path))
    if rounds is not None:  # --rounds replaces the count and keeps the file's reference setting
        repeat = Rounds.parse({"count": rounds, "reference": repeat.reference}, "--rounds")
    later = add_rounds(resolved, repeat, str(path))
    if later:  # the later rounds run before the eval, which then compares every round
        at = order.index("eval") if "eval" in order else len(order)
        order[at:at] = later
        if "eval" in resolved:
            resolved["eval"]["identity"] = {**resolved["eval"]["identity"], "rounds": dataclasses.asdict(repeat)}
    tiny = render(spec.get("tiny_model"), variables) if spec.get("tiny_model") is not None else None
    if tiny is not None and set(tiny) - set(TINY_MODEL_FLAGS):
        raise RecipeError(f"{path}: tiny_model: unknown keys {sorted(set(tiny) - set(TINY_MODEL_FLAGS))} "
                          f"(expected {sorted(TINY_MODEL_FLAGS)})")
    launch = LaunchSettings.parse(render(spec.get("launch"), variables), str(path))
    return {"path": str(path), "vars": variables, "tiny_model": tiny, "stages": resolved, "order": order,
            "launch": launch, "rounds": repeat}


def stage_hash(stage: dict[str, Any]) -> str:
    """The hash of a stage's recipe and overrides, with the root left as `${root}`: a finished run moved or copied
    to another folder is still finished."""
    recipe_text = Path(stage["recipe"]).read_text() if "recipe" in stage else ""
    overrides = stage.get("identity", stage.get("overrides"))
    blob = json.dumps({"recipe": recipe_text, "overrides": overrides}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


@dataclass
class Step:
    """One stage of a pipeline run, resolved and checked before anything starts."""

    name: str
    commands: list[list[str] | Parallel]  # run in order; a Parallel runs its processes side by side
    output: Path
    digest: str
    lines: list[str] = field(default_factory=list)  # what it will do (for --dry-run)
    env: dict[str, str] = field(default_factory=dict)  # environment additions (secrets travel here, not in argv)
    kind: str = ""  # the stage it runs (a later round's dpo_r2 runs dpo); default: its name

    def __post_init__(self) -> None:
        self.kind = self.kind or self.name

    @property
    def log(self) -> Path:
        return self.output / ("tiny_model.log" if self.name == "tiny_model" else "stage.log")


SECRET_TO_ENV = {"hub_token": "HF_TOKEN", "token": "HF_TOKEN"}  # what huggingface_hub reads instead


def stage_argv(stage: dict[str, Any], force: bool, name: str) -> tuple[list[str], dict[str, str]]:
    """The stage's command-line arguments, and its environment additions. A secret never goes on a command line
    (every user of the machine can read those, and the stage log records them): a hub token travels as HF_TOKEN."""
    from zephyr.secrets import is_secret_key

    overrides, env = dict(stage["overrides"]), {}
    for key in [k for k in overrides if is_secret_key(k.rsplit(".", 1)[-1])]:
        if key not in SECRET_TO_ENV:
            raise RecipeError(f"stage {name}: override {key} holds a secret: put it in an environment variable "
                              "and give its name (e.g. api_key_env) instead")
        env[SECRET_TO_ENV[key]] = str(overrides.pop(key))
    if force and name in TRAINING:
        overrides["resume"] = False  # a forced rerun trains again instead of resuming the finished run
    return [stage["recipe"], *(as_override(k, v) for k, v in overrides.items())], env


def plan_steps(spec: dict[str, Any], forced: set[str], launch: LaunchSettings | None,
               slurm: Slurm | None = None) -> list[Step]:
    """Resolve every stage's recipe (no model or data is loaded) and check what a real run would refuse: an
    unknown key, a wrong type, a missing local file, a path that no earlier stage writes."""
    steps, produced = [], []
    if spec["tiny_model"] is not None:
        root = Path(spec["vars"]["root"])
        flags = [x for k, v in spec["tiny_model"].items() for x in (TINY_MODEL_FLAGS[k], str(v))]
        tiny = {"overrides": {"out": str(root), **spec["tiny_model"]}, "identity": {"out": "${root}",
                                                                                    **spec["tiny_model"]}}
        steps.append(Step("tiny_model", [stage_command("tiny-model", ["--output-dir", str(root), *flags], None)],
                          root, stage_hash(tiny),
                          [f"embedded default (model/ and data/) in {root}"]))
        produced.append(root)
    for name in spec["order"]:
        stage = spec["stages"][name]
        kind = stage.get("kind", name)  # a later round's aif_r2 is an aif stage
        argv, env = stage_argv(stage, name in forced, kind)
        try:
            configs = plan.resolve(kind, argv)
            if kind == "eval" and spec["rounds"].count > 1:  # every round's model joins the comparison
                policy = spec["stages"]["dpo"]["overrides"]["output_dir"]
                models = eval_models_override(configs[0].models, policy, spec["rounds"])
                argv = [a for a in argv if not a.startswith("models.")] + [f"models={models}"]
                configs = plan.resolve(kind, argv)
            plan.check_paths(name, configs, produced)
        except RecipeError as err:
            raise RecipeError(f"{spec['path']}: stage {name} ({stage['recipe']}): {err}") from None
        except (ValueError, TypeError, FileNotFoundError) as err:  # a dataclass's own check of its values
            raise RecipeError(f"{spec['path']}: stage {name} ({stage['recipe']}): {err}") from None
        settings = (spec["launch"] or LaunchSettings()).merged(stage["launch"]).merged(launch)
        settings = settings if kind in TRAINING and settings.is_multiprocess() else None
        output = Path(configs[-1].output_dir)
        lines = plan.describe(kind, configs, argv, settings)
        commands = stage_commands(kind, argv, settings, slurm)
        if slurm and name in (*TRAINING, "aif"):
            lines.insert(0, f"Slurm: {slurm.nodes} node(s)" + (f" x {slurm.gpus_per_node} processes" if name in
                                                              TRAINING else ", one prompt shard each, then merged"))
        elif kind in ("aif", "eval") and plan.runs_local_models(configs[0]):
            devices, tp = visible_gpus(), plan.gpus_per_worker(configs[0])
            workers = (stage["launch"].num_processes if stage["launch"] else None) or len(devices) // tp
            if workers > 1:
                commands = shard_workers(kind, argv, workers, devices, tp)
                lines.insert(0, f"workers: {workers} side by side ({tp} GPU(s) each), one shard each, then merged")
        steps.append(Step(name, commands, output, stage_hash(stage), lines, env,
                          kind))
        produced.append(output)
    return steps


def run_pipeline(path: str | Path, start: str | None = None, only: str | None = None, root: str | None = None,
                 seed: int | None = None, launch: str | None = None, dry_run: bool = False,
                 rounds: int | None = None) -> dict[str, Any]:
    spec = load_pipeline(path, root, seed, rounds)
    order = (["tiny_model"] if spec["tiny_model"] is not None else []) + spec["order"]
    for flag, value in (("--from", start), ("--only", only)):
        if value and value not in order:
            raise RecipeError(f"{flag} {value}: not a stage of this pipeline (stages: {order})")
    forced = set(order[order.index(start):]) if start else {only} if only else set()
    steps = plan_steps(spec, forced, LaunchSettings.parse(launch, "--launch"), Slurm.from_env())
    # one run per root: a second `zephyr run` on it refuses, naming this one (zephyr/run_lock.py)
    with locked(spec["vars"]["root"], enabled=not dry_run):
        report, timings = run_steps(steps, forced, only, dry_run)
    if dry_run:
        print(plan_text(spec, report))
        return {"root": spec["vars"]["root"], "seed": spec["vars"]["seed"], "seconds": {},
                "plan": {step.name: status for step, status in report}}
    lines = [f"  {s.name:<10} {timings.get(s.name, 0):7.1f}s  {s.output}  {key_metrics(s.kind, s.output)}"
             for s in steps]
    logger.info("pipeline summary (stage, seconds this run, outputs, key metrics):\n%s", "\n".join(lines))
    return {"root": spec["vars"]["root"], "seed": spec["vars"]["seed"], "seconds": timings}


def run_steps(steps: list[Step], forced: set[str], only: str | None,
              dry_run: bool) -> tuple[list[tuple[Step, str]], dict[str, float]]:
    """Run (or, in a dry run, plan) each step that is not already complete: (step, status) and seconds per step."""
    timings: dict[str, float] = {}
    inputs_time = 0.0  # when the newest earlier stage finished: a stage older than its inputs is stale
    report = []
    for step in steps:
        done = finished_at(step.output, step.digest)
        if only and step.name != only:
            inputs_time = max(inputs_time, done or 0.0)
            report.append((step, "not in this run (--only)"))
            continue
        if step.name not in forced and done is not None and done >= inputs_time:
            logger.info("stage %s: already complete in %s (skipped; --from %s reruns it)", step.name, step.output,
                        step.name)
            inputs_time = done
            report.append((step, "done"))
            continue
        report.append((step, "forced" if step.name in forced else "stale" if done is not None else "to run"))
        if dry_run:
            inputs_time = time.time()
            continue
        logger.info("stage %s: starting (outputs in %s, log %s)", step.name, step.output, step.log)
        (step.output / MARKER).unlink(missing_ok=True)  # from now on the folder holds a run that has not finished
        t0 = time.time()
        for command in step.commands:
            run = run_logged(command, step.log, step.env)
            if run.code != 0:
                break
        if run.code != 0:
            stopped = run.signal is not None or run.code in (130, 143)
            what = "stopped" if stopped else "failed"
            hint = "; rerun the same command to resume" if stopped else ""
            print(f"zephyr run: stage {step.name} {what} with exit code {run.code}; full log: {step.log}{hint}",
                  file=sys.stderr, flush=True)
            raise SystemExit(run.code)
        timings[step.name] = time.time() - t0
        mark_done(step.output, step.name, step.digest, timings[step.name])
        inputs_time = time.time()
        logger.info("stage %s: done in %.1fs", step.name, timings[step.name])
    return report, timings


def commands_of(step: Step) -> list[list[str]]:
    return [c for entry in step.commands for c in (entry.commands if isinstance(entry, Parallel) else [entry])]


def plan_text(spec: dict[str, Any], report: list[tuple[Step, str]]) -> str:
    out = [f"pipeline {spec['path']} (root {spec['vars']['root']}, seed {spec['vars']['seed']}): every recipe "
           "resolved and checked; nothing was loaded or run"]
    for step, status in report:
        out += ["", f"[{step.name}] {status}", *(f"  command: {shlex.join(c)}" for c in commands_of(step)),
                f"  outputs: {step.output} (log: {step.log})", *(f"  {line}" for line in step.lines)]
    return "\n".join(out)


def key_metrics(name: str, folder: Path) -> str:
    """One line of the numbers that matter for a finished stage, read from what it wrote."""
    def read(file: str) -> dict[str, Any]:
        path = folder / file
        return json.loads(path.read_text()) if path.is_file() else {}

    if name in TRAINING:
        r = read("all_results.json")
        keys = ("train_loss", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "eval_accuracy",
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
    which = parser.add_mutually_exclusive_group()  # one or the other: together they would contradict
    which.add_argument("--from", dest="start", metavar="STAGE", help="rerun this stage and the ones after it")
    which.add_argument("--only", metavar="STAGE", help="run only this stage (a later round's: aif_r2, dpo_r2, ...)")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="iterative rounds of AIF + dDPO on the newest policy (replaces the file's rounds count)")
    parser.add_argument("--root", help="output root (replaces ${root}); default: the pipeline's root")
    parser.add_argument("--seed", type=int, help="seed (replaces ${seed}); default: the pipeline's seed")
    parser.add_argument("--launch", metavar="CONFIG",
                        help="launch every training stage with this accelerate config (a file or a name in "
                        "accelerate_configs/: multi_gpu, zero2, zero3, fsdp, cpu_2proc, ...)")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve and check every stage's recipe, print the plan, load and run nothing")
    args = parser.parse_args(argv)
    return run_pipeline(args.pipeline, args.start, args.only, args.root, args.seed, args.launch, args.dry_run,
                        args.rounds)
