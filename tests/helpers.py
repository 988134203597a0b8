"""Small helpers shared by the training tests."""

from __future__ import annotations

import contextlib
import importlib
import os
import struct
from pathlib import Path

import torch

from zephyr.evaluation.reward_accuracy import sequence_logps  # noqa: F401  (re-exported for tests)


def state_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def stage_configs(stage: str, tiny, tmp_path, **overrides):
    """(ModelArguments, DataArguments, Zephyr*Config) for a short run of a training stage (sft, dpo, orpo, simpo,
    kto, rm) on the embedded data: SFT conversations for sft, preference pairs for the others."""
    from zephyr.recipe import build_configs

    data = ("sft", "train_sft", "test_sft") if stage == "sft" else ("prefs", "train_prefs", "test_prefs")
    values = {
        "model_name_or_path": str(tiny / "model"),
        "dtype": "float32",
        "dataset_name": str(tiny / "data" / data[0]),
        "dataset_train_split": data[1],
        "dataset_test_split": data[2],
        "max_train_samples": 32,
        "max_eval_samples": 8,
        "long_rows": "drop",
        "output_dir": str(tmp_path / f"{stage}_out"),
        "max_length": 128,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "seed": 0,
    }
    if stage == "dpo":
        values["precompute_ref_log_probs"] = False  # most tests look at the frozen copy itself
    values.update(overrides)
    return build_configs(values, importlib.import_module(f"zephyr.stages.{stage}").CONFIG_CLASSES)


@contextlib.contextmanager
def process_state_kept():
    """A stage run in this process sets dashboard variables and library log levels: put them back after it."""
    import transformers

    environ = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        transformers.utils.logging.set_verbosity_warning()


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_hub_layout(folder: Path, splits: dict[str, list[dict]]) -> Path:
    """A local dataset folder laid out like a hub dataset: data/<split>-00000-of-00001.parquet per split."""
    import datasets

    (folder / "data").mkdir(parents=True)
    for split, rows in splits.items():
        datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def wandb_run_record(path: Path):
    """The run record (group, project, name, tags) of an offline wandb run file. The file is a LevelDB-style log
    (32 KiB blocks of chunks with a 7-byte header) of wandb Record protobufs, after a 7-byte W&B header."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunks = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7 or data[pos:pos + 7] == bytes(7):  # block padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            if record.WhichOneof("record_type") == "run":
                return record.run
    raise AssertionError(f"{path}: no run record")
