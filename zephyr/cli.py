"""The `zephyr` command: one subcommand per stage, plus tools.

    zephyr run PIPELINE.yaml|DIR [--from STAGE | --only STAGE] [--seed N] [--root DIR] [--rounds N] [--launch CFG]
               [--dry-run]
    zephyr sft RECIPE.yaml [--key value | key=value ...] [--accelerate-config CFG]
    zephyr aif RECIPE.yaml [overrides] [--shard i/n] [--rebinarize]
    zephyr dpo RECIPE.yaml [overrides] [--accelerate-config CFG]
    zephyr orpo RECIPE.yaml [overrides] [--accelerate-config CFG]    (ORPO from the base model: no dSFT, no reference)
    zephyr simpo RECIPE.yaml [overrides] [--accelerate-config CFG]   (SimPO; loss_type sigmoid + cpo_alpha 1.0: CPO)
    zephyr kto RECIPE.yaml [overrides] [--accelerate-config CFG]     (KTO on unpaired rows, or pairs split in two)
    zephyr rm RECIPE.yaml [overrides] [--accelerate-config CFG]      (a reward model on preference pairs)
    zephyr eval RECIPE.yaml [overrides]
    zephyr binarize [RECIPE.yaml] --source DATASET --output_dir DIR [--binarization.score overall ...]
    zephyr sweep SWEEP.yaml [--export-best FILE]
    zephyr report RUN_DIR
    zephyr tiny-model [--output-dir DIR] [--tokenizer bpe|mistral]
    zephyr merge ADAPTER_DIR OUTPUT_DIR [--base MODEL]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from zephyr.keyhelp import COMMAND_CONFIGS, command_help
from zephyr.logs import configure_logging
from zephyr.optional_imports import leave_out_unused_libraries
from zephyr.stages import STAGES, training_stages


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's input, shown as one line and exit code 2. Imported when a command runs, not
    at start-up: `zephyr --help` must not wait for datasets and torch."""
    from zephyr.data.loading import DataError
    from zephyr.data.schemas import RowError
    from zephyr.evaluation.questions import QuestionError
    from zephyr.inference.backends import EndpointError
    from zephyr.inference.store import StoreError
    from zephyr.recipe import RecipeError

    return RecipeError, DataError, RowError, FileNotFoundError, QuestionError, StoreError, EndpointError


def split_accelerate_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """(CFG of `--accelerate-config CFG` or `--accelerate-config=CFG`, or None; the other arguments)."""
    rest, config = [], None
    i = 0
    while i < len(argv):
        if argv[i] == "--accelerate-config":
            config, i = argv[i + 1] if i + 1 < len(argv) else "", i + 2
            continue
        if argv[i].startswith("--accelerate-config="):
            config = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return config, rest


def relaunch_with_accelerate(command: str, argv: list[str]) -> int | None:
    """`zephyr sft --accelerate-config zero3 ...` is `accelerate launch --config_file
    accelerate_configs/zero3.yaml -m zephyr.cli sft ...`: the same launch, without typing it."""
    from zephyr.launch import LaunchSettings, accelerate_config_path, stage_command

    config, rest = split_accelerate_config(argv)
    if config is None:
        return None
    accelerate_config_path(config)  # a missing or unknown config is an error, not a plain one-process run
    cmd = stage_command(command, rest, LaunchSettings(accelerate_config=config))
    print("zephyr: running " + " ".join(cmd[2:]), file=sys.stderr)
    return run_launcher(cmd)


def run_launcher(cmd: list[str]) -> int:
    """Run `accelerate launch` and wait for it, so that a stop request reaches the ranks and they can save.

    SIGTERM sent to this process is passed to the launcher, which passes it to every rank. SIGINT (Ctrl-C) already
    reaches the whole process group from the terminal, so here it only must not end this process while the ranks
    finish their step and save. The launcher kills ranks that have not exited TORCH_ELASTIC_SHUTDOWN_TIMEOUT
    seconds after a signal (`launch.shutdown_timeout_env`).
    """
    from zephyr.launch import shutdown_timeout_env

    env = {**os.environ, **shutdown_timeout_env()}
    proc = subprocess.Popen(cmd, env=env)
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum)),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_stage(stage_main: Callable[[list[str]], object], argv: list[str]) -> int:
    """Run a stage; a user error is one clear line on stderr and exit code 2, not a traceback."""
    from zephyr.inference.failures import IncompleteError

    try:
        stage_main(argv)
    except user_errors() as err:
        print(f"zephyr: error: {err}", file=sys.stderr)
        return 2
    except IncompleteError as err:  # finished, but with failed requests beyond max_failure_rate: rerun retries
        print(f"zephyr: incomplete: {err}", file=sys.stderr)
        return 3
    return 0


def dry_run(stage: str, argv: list[str]) -> int:
    """Resolve and check a stage's recipe and print its plan; a problem is one line and exit code 2."""
    from zephyr.launch import LaunchSettings
    from zephyr.plan import dry_run_stage

    config, argv = split_accelerate_config(argv)
    configure_logging(logging.WARNING)
    try:
        dry_run_stage(stage, argv, LaunchSettings(accelerate_config=config) if config else None)
    except (*user_errors(), ValueError, TypeError) as err:
        print(f"zephyr: error: {err}", file=sys.stderr)
        return 2
    return 0


def lazy_stage(module: str) -> Callable[[list[str]], int]:
    """A command that imports `module` only when run (keeps `zephyr --help` fast) and calls its `main`."""

    def command(argv: list[str]) -> int:
        return run_stage(importlib.import_module(module).main, argv)

    return command


def _tiny_model(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zephyr tiny-model", description="Build the embedded default model + data.")
    parser.add_argument("--output-dir", default="outputs/tiny", help="where model/ and data/ are written")
    parser.add_argument("--tokenizer", choices=["bpe", "mistral"], default="bpe",
                        help="bpe: trained on the shipped data (fast); mistral: Mistral-7B's real 32k tokenizer")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's random initialisation")
    parser.add_argument("--eval-fraction", type=float, default=0.25,
                        help="share of each task kind held out as eval questions (the rest are AIF/dDPO prompts)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the held-out split (the default keeps the demo's questions fixed)")
    args = parser.parse_args(argv)
    if not 0 < args.eval_fraction < 1:
        parser.error(f"--eval-fraction: expected a number between 0 and 1, got {args.eval_fraction}")
    if args.hidden_size < 8 or args.hidden_size % 8:  # 4 attention heads of an even width (rotary embeddings)
        parser.error(f"--hidden-size: expected a multiple of 8 (4 heads of even width), got {args.hidden_size}")
    if args.num_layers < 1:
        parser.error(f"--num-layers: expected at least 1, got {args.num_layers}")
    from zephyr.embedded.build import build_tiny_model

    try:
        out = build_tiny_model(args.output_dir, args.tokenizer, args.hidden_size, args.num_layers, args.seed,
                               eval_fraction=args.eval_fraction, split_seed=args.split_seed)
    except OSError as err:  # a folder that cannot be made or written
        print(f"zephyr: error: --output-dir {args.output_dir}: cannot write there ({err.strerror or err})",
              file=sys.stderr)
        return 2
    print(f"embedded default written to {out}/model and {out}/data")
    return 0


def _merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="zephyr merge", description="Merge a LoRA adapter into its base model.")
    parser.add_argument("adapter_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--base", help="base model (default: the one recorded in adapter_config.json)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    from zephyr.stages.merge import merge_adapter

    try:
        merge_adapter(args.adapter_dir, args.output_dir, args.base, args.dtype, args.trust_remote_code)
    except FileNotFoundError as err:
        print(f"zephyr: error: {err}", file=sys.stderr)
        return 2
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run": (lazy_stage("zephyr.pipeline"), "the whole recipe: dSFT -> AIF -> dDPO -> eval (PIPELINE [--from S | --only S] [--seed N] [--rounds N] [--launch CFG] [--dry-run])"),
    **{name: (lazy_stage(stage.module), stage.summary) for name, stage in STAGES.items()},  # zephyr/stages/__init__.py
    "binarize": (lazy_stage("zephyr.aif.ratings"), "existing ratings (raw UltraFeedback) to preference pairs (--source S --output_dir D [binarization.*])"),
    "sweep": (lazy_stage("zephyr.sweep"), "hyperparameter search over recipe keys on an Optuna study (SWEEP.yaml [--export-best F])"),
    "report": (lazy_stage("zephyr.report"), "PNG plots of a run's curves: loss, DPO rewards, margins, accuracies (PATH)"),
    "tiny-model": (_tiny_model, "build the embedded default: tiny model, tokenizer and datasets"),
    "merge": (_merge, "merge a LoRA adapter into its base model"),
}


# Commands whose process loads DeepSpeed, bitsandbytes and wandb only when the run uses them
# (zephyr/optional_imports.py): the stages, and the orchestrators, which check every recipe before starting them.
STAGE_COMMANDS = tuple(STAGES)
ORCHESTRATORS = ("run", "sweep")
LAUNCHABLE = tuple(training_stages())  # training stages: `--accelerate-config CFG` launches them on several processes
PLANNABLE = tuple(STAGES)  # stages that take --dry-run


def usage() -> str:
    lines = ["usage: zephyr COMMAND [args]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Overrides: --key value, --key=value or key=value; they win over the recipe.",
              f"{', '.join(PLANNABLE)} take --dry-run: resolve and check the recipe, print the plan, run nothing.",
              f"{', '.join(LAUNCHABLE)} take --accelerate-config CFG (a file, or a name in accelerate_configs/:",
              "multi_gpu, zero2, zero3, zero3_offload, fsdp, cpu_2proc) to run under `accelerate launch`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    whole_process = argv is None  # `zephyr ...` or `python -m zephyr.cli ...`, not a call from Python
    argv = sys.argv[1:] if argv is None else argv
    from zephyr.launch import Ending, exit_without_teardown, watch_parent

    watch_parent()  # started by `zephyr run`: do not outlive it
    ending = exit_without_teardown() if whole_process else Ending()  # a call from Python: noted, never used
    try:
        ending.code = run_command(argv, whole_process)
    except SystemExit as stop:  # argparse's errors; a training stage that stopped (143 on SIGTERM, ...)
        ending.code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        raise
    except KeyboardInterrupt:
        ending.code = 128 + signal.SIGINT
        raise
    return ending.code


def run_command(argv: list[str], whole_process: bool) -> int:
    configure_logging(logging.INFO)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from zephyr import __version__

        print(__version__)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"zephyr: unknown command '{argv[0]}'{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    if argv[0] in COMMAND_CONFIGS and any(a in ("-h", "--help") for a in argv[1:]):
        print(command_help(argv[0], command[1]))
        return 0
    lean = whole_process and argv[0] in (*STAGE_COMMANDS, *ORCHESTRATORS)
    if argv[0] in PLANNABLE and "--dry-run" in argv:
        if lean:
            leave_out_unused_libraries(argv[1:], orchestrator=True)  # like an orchestrator, it loads no model
        return dry_run(argv[0], [a for a in argv[1:] if a != "--dry-run"])
    if argv[0] in LAUNCHABLE:
        try:
            code = relaunch_with_accelerate(argv[0], argv[1:])
        except FileNotFoundError as err:
            print(f"zephyr: error: {err}", file=sys.stderr)
            return 2
        if code is not None:
            return code
    if lean:  # before the command imports accelerate, transformers and peft
        leave_out_unused_libraries(argv[1:], orchestrator=argv[0] in ORCHESTRATORS)
    elif whole_process and argv[0] == "tiny-model":
        leave_out_unused_libraries([])  # it builds a model from nothing: given nothing, it needs none of them
    return command[0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
