"""From a recipe's data section to validated train/eval datasets in canonical form.

Order: load each source -> convert its schema and validate every row -> weight -> mix -> eval split ->
decontaminate -> length check. Invalid rows are an error naming source and row, or (invalid_rows: drop)
dropped with a count and examples in the log.

Conversion, validation and tokenization are batched `Dataset.map`s over `dataset_num_proc` processes; every row
is tokenized once. Given a `ChatTokenization` (the dSFT stage), the token ids the length check measured stay in the
rows, and TRL's SFTTrainer trains on them instead of tokenizing every row again. A preparation is recorded under
a key made of its inputs (zephyr/data/cache.py): the next run, or the other ranks of a multi-process launch, read
it instead of preparing again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Value, concatenate_datasets

from zephyr.configs import DataArguments, DatasetSource
from zephyr.data.cache import (
    file_backed,
    file_identity,
    preparation_key,
    read_prepared,
    source_identity,
    work_folder,
    write_prepared,
)
from zephyr.data.decontamination import Decontaminator, read_benchmark_prompts
from zephyr.data.loading import DataError, load_source, mixture_sources, take_weight
from zephyr.data.schemas import Kind, RowError, canonical_features, convert_row, detect_schema, row_kind
from zephyr.data.validation import preference_problem, sft_problem, unpaired_problem

logger = logging.getLogger(__name__)

# Worker processes pay off only above these many rows each. Measured on 2 CPU cores with UltraChat-like rows:
# converting 20k rows took 0.8-1.2 s in one process, 0.7 s in two (starting and feeding a worker costs ~0.4 s);
# tokenizing runs at ~500 conversations/s per process.
ROWS_PER_PROCESS = {"convert": 10_000, "tokenize": 500}
PROBLEM, NOT_UTF8 = "__zephyr_problem", "__zephyr_not_utf8"  # per-row results of the validation map
ROW_CHECKS: dict[str, Callable[[dict], str | None]] = {
    "sft": sft_problem, "preference": preference_problem, "unpaired": unpaired_problem}
UNMASKED = "__zephyr_unmasked"  # a row whose assistant-token mask is all 0


def processes(num_proc: int | None, rows: int, work: str) -> int | None:
    """`num_proc` for `Dataset.map`: at most the recipe's `dataset_num_proc`, fewer when the rows are too few to
    pay for starting them; None is one process (no workers)."""
    n = min(num_proc or 1, rows // ROWS_PER_PROCESS[work])
    return n if n > 1 else None


@dataclass(frozen=True)
class ChatTokenization:
    """How the trainer tokenizes a conversation (TRL's SFTTrainer: `apply_chat_template` with this template, None
    for the tokenizer's own, and with the assistant-token masks when the loss is on assistant turns only). Given to
    `prepare_datasets`, the rows keep these `input_ids` (and `assistant_masks`), which TRL then trains on as they are.
    """

    chat_template: str | None = None
    assistant_masks: bool = False


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


def canonical_rows(ds: Dataset, source: DatasetSource, kind: Kind, policy: str, report: DataReport,
                   num_proc: int | None = None, cache_file: Path | None = None) -> Dataset:
    """Convert and validate every row; raise on the first bad row, or drop bad rows and say how many. The rows
    are written to `cache_file` (None: next to the source's own files, or in memory for a dataset in memory)."""
    name = source_name(source)
    try:
        schema = detect_schema(ds.column_names, kind)
    except RowError as err:
        raise DataError(f"{name}: {err}") from None
    if len(ds) == 0:
        raise DataError(f"{name}: the dataset has no rows")
    kind = row_kind(kind, schema)
    features = canonical_features(kind)
    checked = ds.with_format("arrow").map(
        _convert_batch,
        batched=True,
        fn_kwargs={"schema": schema, "check": ROW_CHECKS[kind], "columns": list(features),
                   "source_features": ds.features},
        remove_columns=ds.column_names,
        features=Features({**features, PROBLEM: Value("string"), NOT_UTF8: Value("string")}),
        num_proc=processes(num_proc, len(ds), "convert"),
        cache_file_name=str(cache_file) if cache_file is not None else None,
        desc=f"Validating {name}",
    ).with_format(None)
    flags = checked.select_columns([PROBLEM, NOT_UTF8]).with_format("arrow")[:]
    failed = pc.or_(pc.is_valid(flags[PROBLEM]), pc.is_valid(flags[NOT_UTF8]))
    bad = []
    for index in pc.indices_nonzero(failed).to_pylist():  # in source order: the first bad row is reported
        reason, problem = flags[NOT_UTF8][index].as_py(), flags[PROBLEM][index].as_py()
        if reason is not None:  # whatever the policy: such text cannot be read at all
            raise DataError(f"{name}: row {index}: text is not valid UTF-8 ({reason}); expected UTF-8 strings")
        if policy == "error":
            raise DataError(
                f"{name}: row {index}: {problem}. Fix the data, or set invalid_rows: drop to skip such rows"
            )
        bad.append((index, problem))
    checked = checked.remove_columns([PROBLEM, NOT_UTF8])
    if not bad:
        return checked
    report.drop("invalid", len(bad))
    examples = "; ".join(f"row {i}: {p}" for i, p in bad[:3])
    logger.warning("%s: dropped %d invalid rows of %d (invalid_rows: drop). Examples: %s", name, len(bad),
                   len(ds), examples)
    if len(bad) == len(ds):
        raise DataError(f"{name}: no valid rows left ({len(bad)} invalid); e.g. row {bad[0][0]}: {bad[0][1]}")
    return checked.select(pc.indices_nonzero(pc.invert(failed)).to_pylist())


def _convert_batch(batch: pa.Table, schema: str, check: Callable[[dict], str | None], columns: list[str],
                   source_features: Features) -> dict[str, list]:
    """One batch of `canonical_rows`: every row converted (None where it fails) with its problem, if any."""
    out: dict[str, list] = {column: [] for column in (*columns, PROBLEM, NOT_UTF8)}
    for row in _decoded_rows(batch, source_features):
        converted, problem, not_utf8 = None, None, None
        if isinstance(row, UnicodeDecodeError):
            not_utf8 = row.reason
        else:
            try:
                converted = convert_row(row, schema)
                problem = check(converted)
            except RowError as err:
                problem = str(err)
        for column in columns:
            out[column].append(converted[column] if problem is None and converted is not None else None)
        out[PROBLEM].append(problem)
        out[NOT_UTF8].append(not_utf8)
    return out


def _decoded_rows(batch: pa.Table, features: Features) -> list[dict | UnicodeDecodeError]:
    """The rows of `batch` as datasets gives them (its features decoded: a Json column becomes objects); a row
    whose text is not UTF-8 (pyarrow stores it unchecked) as its error."""
    try:
        rows: list[dict | UnicodeDecodeError] = batch.to_pylist()
    except UnicodeDecodeError:
        rows = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except UnicodeDecodeError as err:
                rows.append(err)
    return [row if isinstance(row, UnicodeDecodeError) else features.decode_example(row) for row in rows]


def load_sources(args: DataArguments, report: DataReport) -> tuple[list[tuple[DatasetSource, Dataset]], int,
                                                                   float | None]:
    """Every source the recipe names, loaded as it is: ([(source, rows)], seed, test_split_size)."""
    sources, seed, test_size = mixture_sources(args)
    loaded = []
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
        loaded.append((source, raw))
    return loaded, seed, test_size


def split_sets(args: DataArguments, kind: Kind, report: DataReport, loaded: list[tuple[DatasetSource, Dataset]],
               seed: int, test_size: float | None, num_proc: int | None = None,
               work: Path | None = None) -> tuple[Dataset, Dataset | None]:
    """Canonical rows of every source, weighted, mixed and split. With `work`, every intermediate dataset is
    written there (the later steps write next to their input): not into a source's folder, which may be the
    user's own and read-only."""
    parts: dict[str, list[Dataset]] = {"train": [], "test": []}
    for i, (source, raw) in enumerate(loaded):
        cache_file = work / f"source-{i}.arrow" if work is not None else None
        ds = canonical_rows(raw, source, kind, args.invalid_rows, report, num_proc, cache_file)
        if kind == "unpaired" and "chosen" in ds.column_names:
            ds = unpair(ds, seed)
            logger.info("%s: each of %d pairs split into a desirable and an undesirable row", source_name(source),
                        len(ds) // 2)
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


def _unpair_batch(batch: dict[str, list]) -> dict[str, list]:
    n = len(batch["prompt"])
    return {"prompt": batch["prompt"] * 2, "completion": batch["chosen"] + batch["rejected"],
            "label": [True] * n + [False] * n}


def unpair(ds: Dataset, seed: int) -> Dataset:
    """Canonical pairs as unpaired rows: each pair gives (prompt, chosen, desirable) and (prompt, rejected,
    undesirable); no row is dropped. Shuffled with the mixture's seed, eval rows too: a batch then holds both labels
    (and so does the first max_eval_samples rows), and KTO's KL estimate, which pairs each row with its neighbour's
    completion, almost never pairs a prompt with one of its own answers."""
    rows = ds.map(_unpair_batch, batched=True, remove_columns=ds.column_names,
                  features=canonical_features("unpaired"), desc="Splitting pairs into unpaired rows")
    return rows.shuffle(seed=seed)


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


def _batch_ids(tokenizer, conversations: list[list[dict]], **kwargs: Any) -> list[list[int]]:
    """`chat_ids` of many conversations in one call (the tokenizer encodes a batch at once, on every core)."""
    return tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True, **kwargs)["input_ids"]


def _length_batch(batch: dict[str, list], tokenizer, kind: Kind) -> dict[str, list[int]]:
    if kind == "sft":
        full = [len(ids) for ids in _batch_ids(tokenizer, batch["messages"])]
        return {"full": full, "prompt": [0] * len(full)}
    prompts = batch["prompt"]
    answers = ("completion",) if kind == "unpaired" else ("chosen", "rejected")
    sides = [[len(ids) for ids in _batch_ids(tokenizer, [p + a for p, a in zip(prompts, batch[side], strict=True)])]
             for side in answers]
    prompt = [len(ids) for ids in _batch_ids(tokenizer, prompts, add_generation_prompt=True)]
    return {"full": [max(lengths) for lengths in zip(*sides, strict=True)], "prompt": prompt}


def token_lengths(ds: Dataset, tokenizer, kind: Kind, num_proc: int | None = None) -> tuple[list[int], list[int]]:
    """Full tokenized length of each row (longest side for preferences) and its prompt length."""
    if len(ds) == 0:
        return [], []
    lengths = ds.map(_length_batch, batched=True, fn_kwargs={"tokenizer": tokenizer, "kind": kind},
                     remove_columns=ds.column_names, num_proc=processes(num_proc, len(ds), "tokenize"),
                     desc="Measuring token lengths").with_format("arrow")[:]
    return lengths["full"].to_pylist(), lengths["prompt"].to_pylist()


def _tokenize_batch(batch: dict[str, list], tokenizer, tokenization: ChatTokenization) -> dict[str, list]:
    out = tokenizer.apply_chat_template(batch["messages"], tokenize=True, return_dict=True,
                                        chat_template=tokenization.chat_template,
                                        return_assistant_tokens_mask=tokenization.assistant_masks)
    if not tokenization.assistant_masks:
        return {"input_ids": out["input_ids"]}
    masks = out["assistant_masks"]
    return {"input_ids": out["input_ids"], "assistant_masks": masks, UNMASKED: [1 not in m for m in masks]}


def tokenize_conversations(ds: Dataset, tokenizer, tokenization: ChatTokenization, name: str,
                           num_proc: int | None = None) -> Dataset:
    """`ds` (canonical SFT rows) with the trainer's `input_ids` (and `assistant_masks`) added to every row."""
    if len(ds) == 0:
        return ds
    tokenized = ds.map(_tokenize_batch, batched=True, fn_kwargs={"tokenizer": tokenizer, "tokenization": tokenization},
                       num_proc=processes(num_proc, len(ds), "tokenize"), desc=f"Tokenizing {name} rows")
    if not tokenization.assistant_masks:
        return tokenized
    # A template without {% generation %} markers masks every token out: the row would train nothing.
    unmasked = pc.indices_nonzero(tokenized.with_format("arrow")[UNMASKED]).to_pylist()
    if unmasked:
        raise DataError(
            f"{name}: row {unmasked[0]}: no token is in the assistant-only loss mask ({len(unmasked)} such rows): the "
            "chat template must wrap the assistant's turns in {% generation %} ... {% endgeneration %}; fix the "
            "template, or set assistant_only_loss: false"
        )
    return tokenized.remove_columns(UNMASKED)


def sequence_lengths(ds: Dataset) -> list[int]:
    """The number of `input_ids` of every row."""
    return pc.list_value_length(ds.with_format("arrow")["input_ids"]).to_pylist()


def enforce_max_length(ds: Dataset, tokenizer, max_length: int | None, kind: Kind, policy: str, name: str,
                       report: DataReport, num_proc: int | None = None,
                       lengths: tuple[list[int], list[int]] | None = None) -> Dataset:
    """long_rows: error, drop or truncate rows longer than max_length tokens; `lengths` (full, prompt) when known."""
    if max_length is None or len(ds) == 0:
        return ds
    full, prompt = lengths if lengths is not None else token_lengths(ds, tokenizer, kind, num_proc)
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


def check_length_and_tokenize(ds: Dataset, tokenizer, max_length: int | None, kind: Kind, policy: str, name: str,
                              report: DataReport, num_proc: int | None,
                              tokenization: ChatTokenization | None) -> Dataset:
    """The length check; with `tokenization`, on the token ids the rows keep for the trainer."""
    if tokenization is None:
        return enforce_max_length(ds, tokenizer, max_length, kind, policy, name, report, num_proc)
    ds = tokenize_conversations(ds, tokenizer, tokenization, name, num_proc)
    lengths = sequence_lengths(ds)
    return enforce_max_length(ds, tokenizer, max_length, kind, policy, name, report, lengths=(lengths, [0] * len(ds)))


def tokenizer_identity(tokenizer) -> str | None:
    """A hash of the tokenizer (vocabulary, special tokens, chat template): what datasets keys its own caches by."""
    if tokenizer is None:
        return None
    from datasets.fingerprint import Hasher

    return Hasher.hash(tokenizer)


def prepare_datasets(
    args: DataArguments, kind: Kind, tokenizer=None, max_length: int | None = None, *, num_proc: int | None = None,
    tokenization: ChatTokenization | None = None,
) -> tuple[Dataset, Dataset | None, DataReport]:
    """Train and (optional) eval datasets in canonical form, with a report of what was dropped and why.

    With `tokenizer` and `max_length`, rows longer than max_length are handled as `args.long_rows` says. With
    `tokenization` (SFT only, needs `tokenizer`), the rows also keep their token ids for the trainer. `num_proc`
    (the trainer's dataset_num_proc) is how many processes convert, validate and tokenize."""
    if tokenization is not None and (kind != "sft" or tokenizer is None):
        raise ValueError("tokenization: only for SFT rows, with a tokenizer")
    report = DataReport()
    loaded, seed, test_size = load_sources(args, report)
    key = preparation_key(
        kind=kind, data=dataclasses.asdict(args), sources=[(repr(s), source_identity(raw)) for s, raw in loaded],
        tokenizer=tokenizer_identity(tokenizer), max_length=max_length if tokenizer is not None else None,
        tokenization=dataclasses.asdict(tokenization) if tokenization is not None else None,
        decontamination=file_identity(args.decontamination_file),
    )
    cached = read_prepared(key)
    if cached is not None:
        splits, meta = cached
        report = DataReport(**meta)
        logger.info("data: read from cache (%s): %d train rows, %d eval rows; loaded %s; dropped %s", key,
                    report.train_rows, report.eval_rows, report.loaded, report.dropped or "none")
        return splits["train"], splits["eval"], report
    work = work_folder(key)
    try:
        train, test = _prepare(args, kind, report, loaded, seed, test_size, tokenizer, max_length, num_proc,
                               tokenization, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the results are copies in their own folders
    write_prepared(key, {"train": train, "eval": test}, dataclasses.asdict(report))
    logger.info("data: prepared (%s): %d train rows, %d eval rows; loaded %s; dropped %s", key, report.train_rows,
                report.eval_rows, report.loaded, report.dropped or "none")
    return train, test, report


def _prepare(args: DataArguments, kind: Kind, report: DataReport, loaded: list[tuple[DatasetSource, Dataset]],
             seed: int, test_size: float | None, tokenizer, max_length: int | None, num_proc: int | None,
             tokenization: ChatTokenization | None, work: Path) -> tuple[Dataset, Dataset | None]:
    train, test = split_sets(args, kind, report, loaded, seed, test_size, num_proc, work)
    if args.decontamination_file:
        train = decontaminate(train, args, report)
    if args.max_train_samples is not None:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if test is not None and args.max_eval_samples is not None:
        test = test.select(range(min(args.max_eval_samples, len(test))))
    if tokenizer is not None:
        train = check_length_and_tokenize(train, tokenizer, max_length, kind, args.long_rows, "train", report,
                                          num_proc, tokenization)
        if test is not None:
            test = check_length_and_tokenize(test, tokenizer, max_length, kind, args.long_rows, "eval", report,
                                             num_proc, tokenization)
    for split, ds in (("training", train), ("eval", test)):
        if ds is not None and len(ds) == 0:
            raise DataError(f"no {split} rows left after filtering (dropped: {report.dropped}): expected at least one; "
                            "check max_length, long_rows, max_train_samples/max_eval_samples and decontamination")
    train = file_backed(train, f"{kind}-train")
    test = file_backed(test, f"{kind}-eval") if test is not None else None
    report.train_rows, report.eval_rows = len(train), len(test) if test is not None else 0
    return train, test

