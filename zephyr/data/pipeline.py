"""From a recipe's data section to validated train/eval datasets in canonical form.

Order: load each source -> convert its schema -> validate every row -> weight -> mix -> eval split ->
decontaminate -> length check. Invalid rows are an error naming source and row, or (invalid_rows: drop)
dropped with a count and examples in the log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from datasets import Dataset, concatenate_datasets
from tqdm.auto import tqdm

from zephyr.configs import DataArguments, DatasetSource
from zephyr.data.cache import file_backed
from zephyr.data.decontamination import Decontaminator, read_benchmark_prompts
from zephyr.data.loading import DataError, load_source, mixture_sources, take_weight
from zephyr.data.schemas import Kind, RowError, convert_row, detect_schema
from zephyr.data.validation import preference_problem, sft_problem

logger = logging.getLogger(__name__)


@dataclass
class DataReport:
    """What happened to the rows; logged at the end and saved next to the model."""

    loaded: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    train_rows: int = 0
    eval_rows: int = 0

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def source_name(source: DatasetSource) -> str:
    return f"{source.id} [{source.split}]"


def canonical_rows(ds: Dataset, source: DatasetSource, kind: Kind, policy: str, report: DataReport) -> Dataset:
    """Convert and validate every row; raise on the first bad row, or drop bad rows and say how many."""
    name = source_name(source)
    try:
        schema = detect_schema(ds.column_names, kind)
    except RowError as err:
        raise DataError(f"{name}: {err}") from None
    check = sft_problem if kind == "sft" else preference_problem
    rows, bad = [], []
    for index, row in enumerate(_rows(ds, name)):
        try:
            converted = convert_row(row, schema)
            problem = check(converted)
        except RowError as err:
            problem = str(err)
        if problem is None:
            rows.append(converted)
            continue
        if policy == "error":
            raise DataError(
                f"{name}: row {index}: {problem}. Fix the data, or set invalid_rows: drop to skip such rows"
            )
        bad.append((index, problem))
    if bad:
        report.drop("invalid", len(bad))
        examples = "; ".join(f"row {i}: {p}" for i, p in bad[:3])
        logger.warning("%s: dropped %d invalid rows of %d (invalid_rows: drop). Examples: %s", name, len(bad),
                       len(ds), examples)
    if not bad and not rows:
        raise DataError(f"{name}: the dataset has no rows")
    if not rows:
        raise DataError(f"{name}: no valid rows left ({len(bad)} invalid); e.g. row {bad[0][0]}: {bad[0][1]}")
    return Dataset.from_list(rows)


def _rows(ds: Dataset, name: str) -> Iterator[dict]:
    """The rows of `ds`; text that is not UTF-8 (pyarrow stores it unchecked) is an error naming the row."""
    done = 0
    try:
        for row in tqdm(ds, desc=f"Validating {name}", disable=len(ds) < 5000):
            yield row
            done += 1
    except UnicodeDecodeError as err:
        raise DataError(f"{name}: row {done}: text is not valid UTF-8 ({err.reason}); expected UTF-8 strings") from None


def load_split_sets(args: DataArguments, kind: Kind, report: DataReport) -> tuple[Dataset, Dataset | None]:
    sources, seed, test_size = mixture_sources(args)
    parts: dict[str, list[Dataset]] = {"train": [], "test": []}
    for source in sources:
        try:
            raw = load_source(source)
        except DataError:
            # A single dataset_name's default test split is optional.
            if source.role == "test" and args.dataset_name and args.dataset_test_split == "test":
                logger.info("%s has no split 'test': no eval set", source.id)
                continue
            raise
        report.loaded[source_name(source)] = len(raw)
        ds = canonical_rows(raw, source, kind, args.invalid_rows, report)
        parts[source.role].append(take_weight(ds, source.weight, seed) if source.role == "train" else ds)
    if not parts["train"]:
        raise DataError("no training source: at least one dataset must have role train")
    train = concatenate_datasets(parts["train"]).shuffle(seed=seed)
    test = concatenate_datasets(parts["test"]) if parts["test"] else None
    if test_size:
        check_test_split_size(test_size, len(train))
        split = train.train_test_split(test_size=test_size if test_size < 1 else int(test_size), seed=seed)
        train, carved = split["train"], split["test"]
        test = concatenate_datasets([test, carved]) if test is not None else carved
    return train, test


def check_test_split_size(test_size: float, rows: int) -> None:
    """Both sides of the hold-out must keep a row (datasets takes ceil(fraction x rows) for eval)."""
    held_out = math.ceil(test_size * rows) if test_size < 1 else int(test_size)
    if held_out >= rows:
        plural = "row" if rows == 1 else "rows"
        raise DataError(f"dataset_mixture.test_split_size: {test_size:g} holds out {held_out} of the {rows} training "
                        f"{plural}, leaving none to train on: expected a fraction or a count that leaves at least one "
                        "row on each side (add data, lower test_split_size, or remove it and give a test source)")


def user_texts(row: dict) -> list[str]:
    messages = row.get("messages") or row.get("prompt") or []
    return [m["content"] for m in messages if m["role"] == "user"]


def decontaminate(ds: Dataset, args: DataArguments, report: DataReport) -> Dataset:
    try:
        prompts = read_benchmark_prompts(args.decontamination_file)
        checker = Decontaminator(prompts, args.decontamination_method, args.decontamination_ngram)
    except (OSError, ValueError) as err:
        raise DataError(f"decontamination: {err}") from None
    keep = [i for i, row in enumerate(ds) if not checker.is_contaminated(user_texts(row))]
    removed = len(ds) - len(keep)
    report.drop("contaminated", removed)
    logger.info("decontamination (%s, %d benchmark prompts): removed %d of %d training rows",
                args.decontamination_method, len(prompts), removed, len(ds))
    return ds.select(keep)


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    return tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )["input_ids"]


def token_lengths(ds: Dataset, tokenizer, kind: Kind) -> tuple[list[int], list[int]]:
    """Full tokenized length of each row (longest side for preferences) and its prompt length."""
    full, prompt = [], []
    for row in ds:
        if kind == "sft":
            full.append(len(chat_ids(tokenizer, row["messages"])))
            prompt.append(0)
        else:
            p = row["prompt"]
            full.append(max(len(chat_ids(tokenizer, p + row[side])) for side in ("chosen", "rejected")))
            prompt.append(len(chat_ids(tokenizer, p, add_generation_prompt=True)))
    return full, prompt


def enforce_max_length(ds: Dataset, tokenizer, max_length: int | None, kind: Kind, policy: str, name: str,
                       report: DataReport) -> Dataset:
    if max_length is None or len(ds) == 0:
        return ds
    full, prompt = token_lengths(ds, tokenizer, kind)
    too_long = [i for i, n in enumerate(full) if n > max_length]
    # A prompt that alone fills max_length leaves no completion token after truncation: never trainable.
    hopeless = {i for i, n in enumerate(prompt) if n >= max_length}
    if policy == "truncate":
        drop = sorted(hopeless)
        if too_long:
            logger.info("%s: %d rows longer than max_length=%d will be truncated", name, len(too_long), max_length)
    elif too_long and policy == "error":
        i = too_long[0]
        first_user = next((t for t in user_texts(ds[i])), "")
        raise DataError(
            f"{name}: row {i} (first user turn {first_user[:60]!r}) has {full[i]} tokens, more than "
            f"max_length={max_length} ({len(too_long)} such rows). Raise max_length, or set long_rows: drop or "
            "long_rows: truncate"
        )
    else:
        drop = too_long
    if drop:
        report.drop("too long", len(drop))
        logger.warning("%s: dropped %d of %d rows longer than max_length=%d (e.g. row %d: %d tokens)", name,
                       len(drop), len(ds), max_length, drop[0], full[drop[0]])
        keep = sorted(set(range(len(ds))) - set(drop))
        ds = ds.select(keep)
    return ds


def prepare_datasets(
    args: DataArguments, kind: Kind, tokenizer=None, max_length: int | None = None
) -> tuple[Dataset, Dataset | None, DataReport]:
    """Train and (optional) eval datasets in canonical form, with a report of what was dropped and why."""
    report = DataReport()
    train, test = load_split_sets(args, kind, report)
    if args.decontamination_file:
        train = decontaminate(train, args, report)
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if test is not None and args.max_eval_samples is not None:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    if tokenizer is not None:
        train = enforce_max_length(train, tokenizer, max_length, kind, args.long_rows, "train", report)
        if test is not None:
            test = enforce_max_length(test, tokenizer, max_length, kind, args.long_rows, "eval", report)
    for split, ds in (("training", train), ("eval", test)):
        if ds is not None and len(ds) == 0:
            raise DataError(f"no {split} rows left after filtering (dropped: {report.dropped}): expected at least one; "
                            "check max_length, long_rows, max_train_samples/max_eval_samples and decontamination")
    train = file_backed(train, f"{kind}-train")
    test = file_backed(test, f"{kind}-eval") if test is not None else None
    report.train_rows, report.eval_rows = len(train), len(test) if test is not None else 0
    logger.info("data: %d train rows, %d eval rows; loaded %s; dropped %s", report.train_rows, report.eval_rows,
                report.loaded, report.dropped or "none")
    return train, test, report
