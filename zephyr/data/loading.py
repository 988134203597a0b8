"""Load one dataset source (local file, local folder, or hub id) and mix several by weight."""

from __future__ import annotations

import codecs
import csv
import json
import logging
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets import Dataset, concatenate_datasets

from zephyr.configs import DataArguments, DatasetSource
from zephyr.recipe import RecipeError, build_configs, cast_value
from zephyr.rules import is_one_split

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
            ds = _load_file(path, builder)
        elif path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if source.split not in ds:
                    raise DataError(f"{path}: no split '{source.split}' (has {sorted(ds)})")
                ds = ds[source.split]
        elif path.is_dir() or not looks_like_hub_id(source.id):
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
        if _no_rows(err):
            raise DataError(f"{source.id} (split {source.split}): the split has no rows") from None
        raise DataError(f"{source.id} (split {source.split}): {err}") from None
    except Exception as err:  # the hub or a corrupt file: say which source failed
        raise DataError(f"{source.id} (split {source.split}): could not load: {type(err).__name__}: {err}") from err
    if source.columns:
        missing = [c for c in source.columns if c not in ds.column_names]
        if missing:
            raise DataError(f"{source.id} (split {source.split}): missing columns {missing}; has {ds.column_names}")
        ds = ds.select_columns(source.columns)
    return ds


def _load_file(path: Path, builder: str) -> Dataset:
    """A local data file. Text files are checked for UTF-8 first, and a file datasets cannot parse is read again
    to find the first broken line: datasets only says that generating the dataset failed."""
    if builder in ("json", "csv"):
        check_utf8(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected one row per line, or a table)")
    try:
        kwargs = _csv_as_text(path) if builder == "csv" else {}
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:
        if _no_rows(err):
            raise DataError(f"{path}: the file has no rows") from None
        problem = first_json_problem(path) if builder == "json" else None
        if problem or builder != "json":
            raise DataError(f"{path}: {problem or 'could not load: ' + root_cause(err)}") from None
        as_read = _json_rows_as_read(path)  # valid JSON whose columns Arrow cannot type: a row with content parts
        if as_read is None:
            raise DataError(f"{path}: could not load: {root_cause(err)}") from None
        return as_read
    if builder == "json" and not _contents_are_text(ds.features):
        # datasets fell back to pandas, whose type inference turns answers such as "1" into numbers, or rows have
        # content parts: read the rows as they are written. When those still mix types in a column (a content of
        # 42 among strings), datasets' table is kept: row validation then names the row.
        return _json_rows_as_read(path) or ds
    return ds


def _contents_are_text(feature: Any) -> bool:
    """Whether every `content` field of the features is a string column."""
    if isinstance(feature, dict):
        return all((v == datasets.Value("string") if k == "content" else _contents_are_text(v))
                   for k, v in feature.items())
    inner = getattr(feature, "feature", None)
    return _contents_are_text(inner) if inner is not None else True


def _json_rows_as_read(path: Path) -> Dataset | None:
    """A JSON / JSON Lines file read by Python's json module, each value as written (no type inference), content
    parts joined into text (zephyr.data.schemas.text_of_parts); a problem names its line. None when a column
    still mixes kinds of values (text in one row, a number or a list in another)."""
    from zephyr.data.schemas import RowError, text_of_parts

    def plain(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: (text_of_parts(v, f"'{where}.{k}'") if k == "content" and isinstance(v, list)
                        else plain(v, f"{where}.{k}")) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        numbered = list(enumerate(json.loads(text)))
        label = "row {}"
    else:
        numbered = [(n, json.loads(line)) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
        label = "line {}"
    rows = []
    for number, row in numbered:
        try:
            rows.append({k: plain(v, k) for k, v in row.items()})
        except RowError as err:
            raise DataError(f"{path}: {label.format(number)}: {err}") from None
    columns = list(dict.fromkeys(k for row in rows for k in row))  # every key of every row, none dropped
    try:
        return Dataset.from_dict({c: [row.get(c) for row in rows] for c in columns})
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):  # a column of mixed kinds
        return None


def _no_rows(err: Exception) -> bool:
    return "corresponds to no data" in str(err)  # datasets' words for a file or split without rows


def check_utf8(path: Path, chunk_size: int = 1 << 20) -> None:
    """Raise DataError naming the line and byte of the first byte that is not UTF-8. Needed because pyarrow reads
    such bytes into strings unchecked, and they then fail far from the file (or reach the model as garbage)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0  # bytes and newlines before the current chunk
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks (never a newline)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                line = lines + err.object.count(b"\n", 0, err.start) + 1
                raise DataError(
                    f"{path}: line {line} (byte {offset - pending + err.start}): not valid UTF-8 ({err.reason}); "
                    "expected UTF-8 text: re-save the file as UTF-8"
                ) from None
            if not chunk:
                return
            offset, lines = offset + len(chunk), lines + chunk.count(b"\n")


def first_json_problem(path: Path) -> str | None:
    """Where a JSON or JSON Lines file is broken ("line 3, column 48: not valid JSON (...)"), or None. Besides
    syntax: a key given twice in one object, and a lone surrogate (half of a UTF-16 pair, escaped as \\udXXX),
    which Python's reader accepts and Arrow's refuses without a line number."""
    with open(path, encoding="utf-8", newline="") as f:  # newline="": count lines as datasets does, by "\n"
        text = f.read()
    if not text.strip():
        return "the file has no rows (only blank lines)"
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text, object_pairs_hook=_pairs_checked)
            return _value_problem(rows, "the file")
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data" after the first object: a .json file in JSON Lines form
                return f"line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})"
        except _DuplicateKey as err:
            return f"{err}; expected each key once per object"
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_pairs_checked)
        except json.JSONDecodeError as err:
            return f"line {number}, column {err.colno}: not valid JSON ({err.msg}); expected one JSON object per line"
        except _DuplicateKey as err:
            return f"line {number}: {err}; expected each key once per object"
        if not isinstance(row, dict):
            return f"line {number}: expected a JSON object {{...}} per line, got {type(row).__name__}"
        problem = _value_problem(row, f"line {number}")
        if problem:
            return problem
    return None


class _DuplicateKey(ValueError):
    pass


def _pairs_checked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(f"the key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def _value_problem(value: Any, where: str) -> str | None:
    """A string that is not valid Unicode (a lone surrogate) anywhere in a parsed JSON value."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                bad = item[err.start]
                return (f"{where}: a lone surrogate \\u{ord(bad):04x} in {item[max(0, err.start - 20):err.start]!r}...; "
                        "expected valid Unicode text (a surrogate pair's two halves, or the character itself)")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def root_cause(err: BaseException) -> str:
    """The innermost exception's text: datasets wraps the informative one ("Expected 2 fields in line 3")."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {err}"


def _csv_as_text(path: Path) -> dict:
    """Read every CSV column as text, empty cells as "": left to pandas, an answer column of numbers becomes
    floats and cells such as "None" or "NA" become nulls, and every such row then fails validation."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return {"features": datasets.Features({c: datasets.Value("string") for c in header}), "keep_default_na": False}


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not name.startswith((".", "~"))


def _cast(value: Any, tp: Any, key: str) -> Any:
    try:
        return cast_value(value, tp, key)
    except RecipeError as err:
        raise DataError(str(err)) from None


def _mixture_entry(entry: Any, where: str) -> DatasetSource:
    """One `datasets:` entry, its keys and value types checked like a recipe's."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a mapping such as {{id: org/name, split: train}}, got {entry!r}")
    if "id" not in entry:
        raise DataError(f"{where}: missing key 'id' (a hub id, local file or folder)")
    if entry.get("role", "train") not in ("train", "test"):
        raise DataError(f"{where}: role must be train or test, got {entry['role']!r}")
    values = {k: v for k, v in entry.items() if v is not None or k == "config"}
    try:
        (source,) = build_configs(values, (DatasetSource,), source=where)
    except RecipeError as err:
        raise DataError(str(err)) from None
    return source


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
        seed = _cast(mixture.pop("seed", 0), int, "dataset_mixture.seed")
        test_size = mixture.pop("test_split_size", None)
        if test_size is not None:
            test_size = _cast(test_size, float, "dataset_mixture.test_split_size")
            if test_size and not (0 < test_size < 1 or (test_size >= 1 and test_size.is_integer())):  # 0: none
                raise DataError("dataset_mixture.test_split_size: expected a fraction in (0, 1) or a whole number "
                                f"of rows >= 1, got {test_size:g}")
        if mixture:
            raise DataError(f"dataset_mixture: unknown keys {sorted(mixture)} (expected datasets, seed, test_split_size)")
        if not entries or not isinstance(entries, list):
            raise DataError("dataset_mixture: 'datasets' must list at least one source")
        sources = [_mixture_entry(entry, f"dataset_mixture.datasets[{i}]") for i, entry in enumerate(entries)]
        check_distinct_rows(sources, [f"dataset_mixture.datasets[{i}]" for i in range(len(sources))])
        return sources, seed, test_size
    if not args.dataset_name:
        raise DataError("no data: set dataset_name or dataset_mixture")
    sources = [DatasetSource(id=args.dataset_name, config=args.dataset_config, split=args.dataset_train_split)]
    if args.dataset_test_split and is_one_split(Path(args.dataset_name).expanduser()):
        logger.info("%s is a single file (one split, the training data): no eval set from dataset_test_split %r",
                    args.dataset_name, args.dataset_test_split)
    elif args.dataset_test_split:
        sources.append(
            DatasetSource(id=args.dataset_name, config=args.dataset_config, split=args.dataset_test_split, role="test")
        )
        check_distinct_rows(sources, ["dataset_train_split", "dataset_test_split"])
    return sources, 0, None


def check_distinct_rows(sources: list[DatasetSource], names: list[str]) -> None:
    """Two sources that name different splits must read different rows, and eval rows must not be training rows.
    A single file has one split whatever a recipe calls it, so the handbook's dataset_splits [train_prefs,
    test_prefs] pointed at one file would evaluate on the training rows: refused, with the ways out."""
    seen: dict[tuple, int] = {}  # what a source reads -> the first source reading it
    for i, source in enumerate(sources):
        path = Path(source.id).expanduser()
        one_split = is_one_split(path)
        reads = (str(path.resolve()),) if one_split else (source.id, source.config, source.split)
        j = seen.setdefault(reads, i)
        other = sources[j]
        if j == i or (other.split == source.split and other.role == source.role):
            continue  # the same rows twice in one role is a weighting choice, not a mistake
        if one_split and other.split != source.split:
            raise DataError(
                f"{names[i]}: {source.id} is a single file, which has one split: split '{source.split}' would read "
                f"the same rows as split '{other.split}' ({names[j]}). Use a folder in hub layout "
                f"(data/{other.split}-*.parquet, data/{source.split}-*.parquet), one file per split, or "
                "dataset_mixture.test_split_size to hold out part of the training rows")
        raise DataError(
            f"{names[i]}: split '{source.split}' of {source.id} is also read for {other.role} ({names[j]}): the eval "
            "rows would be training rows. Use another split, or dataset_mixture.test_split_size to hold out part of "
            "the training rows")
