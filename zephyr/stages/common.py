"""What every training stage does the same way: parse the recipe, set up logging, resume, save outputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset
from transformers import set_seed

from zephyr.checkpointing import checkpoints, last_complete_checkpoint, remove_leftovers
from zephyr.configs import DataArguments
from zephyr.data import prepare_datasets
from zephyr.data.pipeline import DataReport
from zephyr.data.schemas import Kind
from zephyr.errors import RecipeError
from zephyr.logs import configure_logging
from zephyr.preflight import check_hub_reachable, check_machine, precision_note
from zephyr.recipe import parse_stage_args
from zephyr.rules import no_eval_set_message, strategy_name
from zephyr.run_lock import locked
from zephyr.secrets import is_secret_key
from zephyr.stages import STAGES
from zephyr.stages.reliability import TrainingStopped
from zephyr.tracking import prepare_tracking, tracking_callbacks

logger = logging.getLogger("zephyr")

def setup_logging(training_args: Any) -> None:
    """zephyr at INFO (or quieter if the recipe's log_level asks); transformers and datasets at the recipe's
    per-process level (warnings by default, and on every rank but the main one)."""
    level = training_args.get_process_log_level()
    configure_logging(max(level, logging.INFO) if level != logging.WARNING else logging.INFO, library_level=level)


def resume_checkpoint(training_args: Any) -> str | None:
    """The last complete checkpoint in output_dir when the recipe allows resuming, else None. Half-written saves
    of a crashed run are removed first (by the one process that saves, before any training step)."""
    out = training_args.output_dir
    if not os.path.isdir(out):
        return None
    if training_args.should_save:
        remove_leftovers(out)
    if not getattr(training_args, "resume", True):
        if training_args.should_save:
            # starting over: the old run's checkpoints would otherwise be what an interrupted new run resumes from
            for old in checkpoints(out):
                logger.info("resume: false: removing %s of the previous run", old)
                shutil.rmtree(old)
        return None
    checkpoint = last_complete_checkpoint(out)
    if checkpoint:
        logger.info("resuming from %s (set resume: false to start over)", checkpoint)
    return str(checkpoint) if checkpoint else None


def public_values(*configs: Any) -> dict[str, Any]:
    """The resolved recipe as plain values, without secrets."""
    out: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            if is_secret_key(f.name):
                continue
            value = getattr(cfg, f.name)
            out[f.name] = value.value if hasattr(value, "value") and not isinstance(value, (list, dict)) else value
    return json.loads(json.dumps(out, default=str))


def save_run_files(output_dir: str, stage: str, configs: tuple[Any, ...], metrics: dict[str, Any],
                   data_report: Any, base_model: str | None) -> None:
    """Recipe (secrets removed), data report, metrics and a model card next to the saved model."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    values = public_values(*configs)
    (out / "zephyr_recipe.yaml").write_text(yaml.safe_dump(values, sort_keys=True))
    (out / "data_report.json").write_text(json.dumps(dataclasses.asdict(data_report), indent=2))
    (out / "all_results.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    lines = [
        f"# {out.name}",
        "",
        f"Trained with zephyr's **{stage}** stage from `{base_model}`.",
        "",
        f"- train rows: {data_report.train_rows}, eval rows: {data_report.eval_rows}",
        f"- rows dropped: {data_report.dropped or 'none'}",
        f"- learning rate: {values.get('learning_rate')}, epochs: {values.get('num_train_epochs')}, "
        f"max steps: {values.get('max_steps')}",
        "",
        "## Metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())),
        "",
        "The full recipe is in `zephyr_recipe.yaml`.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def prepared_data(data_args: DataArguments, training_args: Any, kind: Kind, tokenizer: Any,
                  **options: Any) -> tuple[Dataset, Dataset | None, DataReport]:
    """prepare_datasets for a training stage: rows checked against its max_length, in its dataset_num_proc
    processes. One process prepares (and caches); the others, let in after it, read what it wrote."""
    with training_args.main_process_first(desc="data preparation"):
        return prepare_datasets(data_args, kind, tokenizer, training_args.max_length,
                                num_proc=training_args.dataset_num_proc, **options)


def build_eval_checked(build_trainer: Callable[..., tuple[Any, Any, Any]], model_args: Any, data_args: Any,
                       training_args: Any) -> tuple[Any, Any, Any]:
    """build_trainer, with the Trainer's refusal of eval_strategy without eval data as a user error. The recipe
    check (zephyr/rules.py) catches the cases known before loading (a single file, no test source); a dataset
    whose optional default 'test' split turns out to be missing is only known here."""
    try:
        return build_trainer(model_args, data_args, training_args)
    except ValueError as err:
        if strategy_name(training_args.eval_strategy) != "no" and "eval_dataset" in str(err):
            reason = f"{data_args.dataset_name or 'the data'} has no split '{data_args.dataset_test_split}'"
            raise RecipeError(no_eval_set_message(training_args.eval_strategy, reason)) from None
        raise


def train_stage(argv: list[str], stage: str, classes: tuple[type, ...],
                build_trainer: Callable[..., tuple[Any, Any, Any]]) -> dict[str, Any]:
    """The skeleton every training stage shares: recipe -> logging -> seed -> data + model + trainer -> train
    (resuming when a checkpoint exists) -> evaluate -> save model, tokenizer, metrics, recipe, model card."""
    model_args, data_args, training_args = parse_stage_args(argv, classes, stage)
    check_machine(model_args, training_args)  # before anything is loaded or written
    check_hub_reachable(model_args, data_args)
    note = precision_note(model_args, training_args)
    if note and training_args.process_index == 0:
        logger.warning("%s", note)
    # one run per output_dir: a second one refuses at once, naming this one (zephyr/run_lock.py); the main
    # process holds the lock for all ranks
    with locked(training_args.output_dir, enabled=training_args.process_index == 0):
        return train_in(stage, STAGES[stage].label, model_args, data_args, training_args, build_trainer)


def train_in(stage: str, label: str, model_args: Any, data_args: Any, training_args: Any,
             build_trainer: Callable[..., tuple[Any, Any, Any]]) -> dict[str, Any]:
    """train_stage's work, with the output folder locked."""
    setup_logging(training_args)
    if training_args.world_size > 1:  # every rank says who it is: the stage log then shows all of them
        sys.stderr.write(f"zephyr: {stage} rank {training_args.process_index} of {training_args.world_size} on "
                         f"{socket.gethostname()} ({training_args.device})\n")  # one write: ranks share the log
        sys.stderr.flush()
    set_seed(training_args.seed)
    prepare_tracking(training_args, stage, public_values(model_args, data_args, training_args))

    trainer, tokenizer, report = build_eval_checked(build_trainer, model_args, data_args, training_args)
    for callback in tracking_callbacks(training_args):
        trainer.add_callback(callback)
    checkpoint = resume_checkpoint(training_args)
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except TrainingStopped as stop:  # signal, nan/inf, full disk: say why and how to go on; no final model
        if trainer.accelerator.is_main_process:
            print(f"zephyr: {stop}", file=sys.stderr, flush=True)
        raise
    whole_run = trainer.whole_run_train_loss() if hasattr(trainer, "whole_run_train_loss") else None
    if whole_run is not None:  # the Trainer's train_loss averages only the steps since the last resume
        result.metrics["train_loss"] = whole_run
    metrics = {**result.metrics, "train_samples": report.train_rows,
               **(trainer.run_record() if hasattr(trainer, "run_record") else {})}
    tokens = max((h.get("num_tokens", 0) for h in trainer.state.log_history), default=0)
    if tokens and metrics.get("train_runtime") and checkpoint is None:  # after a resume the count spans both runs
        metrics["train_tokens_per_second"] = tokens / metrics["train_runtime"]
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
        trainer.save_state()
        save_run_files(training_args.output_dir, label, (model_args, data_args, training_args), metrics, report,
                       model_args.model_name_or_path)
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        logger.info("%s done: %s", label, shown)
        logger.info("model, tokenizer, chat template, metrics and model card in %s", training_args.output_dir)
    # Every rank waits for rank 0's writes (the launcher ends the stage when every rank has exited), then leaves the
    # process group. A rank then ends without the interpreter teardown (zephyr/launch.py exit_without_teardown).
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return metrics
