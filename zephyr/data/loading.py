"""Load one dataset source (local file, local folder, or hub id) and mix several by weight."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import datasets
from datasets import Dataset, concatenate_datasets

from zephyr.configs import DataArguments, DatasetSource

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """Bad input data; the message names the source (and row, where there is one) and what was expected."""


def load_source(source: DatasetSource) -> Dataset:
    """A local file (json, jsonl, parquet, csv), a `save_to_disk` folder, a hub-layout folder, or a hub id."""
    path = Path(source.id).expanduser()
    try:
        if path.is_file():
            builder = FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(f"{path}: unsupported file type (expected one of {sorted(FILE_BUILDERS)})")
            kwargs = _csv_as_text(path) if builder == "csv" else {}
            ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        elif path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if source.split not in ds:
                    raise DataError(f"{path}: no split '{source.split}' (has {sorted(ds)})")
                ds = ds[source.split]
        elif path.is_dir() or not _looks_like_hub_id(source.id):
            if not path.exists():
                raise DataError(f"{source.id}: no such file or folder")
            ds = datasets.load_dataset(str(path), source.config, split=source.split)
        elif path.suffix.lower() in FILE_BUILDERS:
            raise DataError(f"{source.id}: no such file")
        else:
            ds = datasets.load_dataset(source.id, source.config, split=source.split)
    except DataError:
        raise
    except ValueError as err:  # datasets' unknown split and similar
        raise DataError(f"{source.id} (split {source.split}): {err}") from None
    except Exception as err:  # the hub or a corrupt file: say which source failed
        raise DataError(f"{source.id} (split {source.split}): could not load: {type(err).__name__}: {err}") from err
    if source.columns:
        missing = [c for c in source.columns if c not in ds.column_names]
        if missing:
            raise DataError(f"{source.id} (split {source.split}): missing columns {missing}; has {ds.column_names}")
        ds = ds.select_columns(source.columns)
    return ds


def _csv_as_text(path: Path) -> dict:
    """Read every CSV column as text, empty cells as "": left to pandas, an answer column of numbers becomes
    floats and cells such as "None" or "NA" become nulls, and every such row then fails validation."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return {"features": datasets.Features({c: datasets.Value("string") for c in header}), "keep_default_na": False}


def _single_split(path: Path) -> bool:
    """A data file or a `save_to_disk` folder of one Dataset: it has no other split to evaluate on."""
    return path.is_file() or ((path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").exists())


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~"))


def take_weight(ds: Dataset, weight: float, seed: int) -> Dataset:
    """weight is the fraction of rows to keep; above 1 the rows repeat (2.0 = every row twice)."""
    if weight < 0:
        raise DataError(f"weight must be >= 0, got {weight}")
    n = int(round(len(ds) * weight))
    whole, rest = divmod(n, len(ds)) if len(ds) else (0, 0)
    parts = [ds] * whole
    if rest:
        parts.append(ds.shuffle(seed=seed).select(range(rest)))
    return concatenate_datasets(parts) if parts else ds.select([])


def mixture_sources(args: DataArguments) -> tuple[list[DatasetSource], int, float | None]:
    """The sources a recipe names, in one form: (sources, seed, test_split_size)."""
    if args.dataset_mixture and args.dataset_name:
        raise DataError("set dataset_name or dataset_mixture, not both")
    if args.dataset_mixture:
        mixture = dict(args.dataset_mixture)
        entries = mixture.pop("datasets", None)
        seed = int(mixture.pop("seed", 0))
        test_size = mixture.pop("test_split_size", None)
        if mixture:
            raise DataError(f"dataset_mixture: unknown keys {sorted(mixture)} (expected datasets, seed, test_split_size)")
        if not entries:
            raise DataError("dataset_mixture: 'datasets' must list at least one source")
        sources = []
        for i, entry in enumerate(entries):
            try:
                sources.append(DatasetSource(**{k: v for k, v in entry.items() if v is not None or k == "config"}))
            except TypeError as err:
                raise DataError(f"dataset_mixture.datasets[{i}]: {err}") from None
            if sources[-1].role not in ("train", "test"):
                raise DataError(f"dataset_mixture.datasets[{i}]: role must be train or test")
        return sources, seed, test_size
    if not args.dataset_name:
        raise DataError("no data: set dataset_name or dataset_mixture")
    sources = [DatasetSource(id=args.dataset_name, config=args.dataset_config, split=args.dataset_train_split)]
    if args.dataset_test_split and not _single_split(Path(args.dataset_name).expanduser()):
        sources.append(
            DatasetSource(id=args.dataset_name, config=args.dataset_config, split=args.dataset_test_split, role="test")
        )
    return sources, 0, None
