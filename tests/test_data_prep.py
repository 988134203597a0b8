"""Data preparation at scale (zephyr/data/pipeline.py): batched conversion, validation and tokenization over
`dataset_num_proc` processes, one tokenization shared with TRL's SFTTrainer, and a preparation done once (cached
by its inputs; under a multi-process launch the main process prepares, the others read).

Exactness: each step is checked against a straightforward row-by-row reference (what zephyr did before): the same
rows in the same order, the same errors naming the same row, and for dSFT the same tokens and labels in the
dataset TRL trains on."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from helpers import stage_configs
from trl import SFTTrainer

from zephyr.configs import DataArguments, DatasetSource
from zephyr.data import pipeline
from zephyr.data.loading import DataError, load_source
from zephyr.data.pipeline import DataReport, canonical_rows, chat_ids, prepare_datasets, token_lengths
from zephyr.data.schemas import RowError, convert_row, detect_schema
from zephyr.data.validation import preference_problem, sft_problem
from zephyr.modeling import load_model, load_tokenizer
from zephyr.stages import sft

REPO = Path(__file__).resolve().parents[1]
WORDS = "apple river stone cloud quick brown fox jumps over lazy dog tree house light water".split()


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def text(rng, median):
    return " ".join(rng.choice(WORDS) for _ in range(max(1, int(rng.lognormvariate(0, 0.8) * median))))


def chats(n, seed=0, median=8):
    """UltraChat-like rows: 1-4 exchanges, some with a system message, log-normal lengths."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": text(rng, 4)}] if i % 5 == 0 else []
        for _ in range(rng.randint(1, 4)):
            messages += [u(text(rng, median)), a(text(rng, 2 * median))]
        rows.append({"messages": messages, "prompt_id": f"id{i}"})
    return rows


def pairs(n, seed=0):
    rng = random.Random(seed)
    return [{"prompt": [u(text(rng, 8))], "chosen": [a(text(rng, 12))], "rejected": [a(text(rng, 12) + " no")]}
            for _ in range(n)]


BAD_SFT = [{"messages": [u("only a question")]}, {"messages": [u("q"), a("  ")]},
           {"messages": [a("answer first"), u("q"), a("x")]}, {"messages": "not a list"}]
BAD_PREF = [{"prompt": [u("q")], "chosen": [a("same")], "rejected": [a("same")]},
            {"prompt": [u("q")], "chosen": [a("x"), a("y")], "rejected": [a("z")]}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def with_bad(rows, bad, positions):
    rows = list(rows)
    for k, pos in enumerate(positions):
        rows.insert(pos, bad[k % len(bad)])
    return rows


# ------------------------------------------------------------------------------------------ the references
def reference_canonical(raw, name, kind, policy):
    """Row by row, as zephyr did before: (rows, [(index, problem)]), raising on the first bad row for error."""
    schema = detect_schema(raw.column_names, kind)
    check = sft_problem if kind == "sft" else preference_problem
    rows, bad = [], []
    for index, row in enumerate(raw):
        try:
            converted = convert_row(row, schema)
            problem = check(converted)
        except RowError as err:
            problem = str(err)
        if problem is None:
            rows.append(converted)
        elif policy == "error":
            raise DataError(f"{name}: row {index}: {problem}. Fix the data, or set invalid_rows: drop to skip such rows")
        else:
            bad.append((index, problem))
    return rows, bad


def reference_lengths(ds, tokenizer, kind):
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


def reference_sft_sets(path, tokenizer, max_length, long_rows, max_train_samples=None):
    """The canonical train set zephyr handed to TRL before: converted row by row, shuffled with seed 0, lengths
    from one chat_ids call per row, long rows dropped (or an error naming the row)."""
    raw = load_source(DatasetSource(id=str(path)))
    rows, _ = reference_canonical(raw, f"{path} [train]", "sft", "drop")
    train = datasets.Dataset.from_list(rows).shuffle(seed=0)
    if max_train_samples is not None:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_length is None:
        return train
    full, _ = reference_lengths(train, tokenizer, "sft")
    too_long = [i for i, n in enumerate(full) if n > max_length]
    if long_rows == "error" and too_long:
        i = too_long[0]
        first_user = next(m["content"] for m in train[i]["messages"] if m["role"] == "user")
        raise DataError(f"train: row {i} (first user turn {first_user[:60]!r}) has {full[i]} tokens, more than "
                        f"max_length={max_length} ({len(too_long)} such rows). Raise max_length, or set long_rows: "
                        "drop or long_rows: truncate")
    if long_rows == "drop":
        train = train.select([i for i in range(len(train)) if i not in set(too_long)])
    return train


@pytest.fixture
def many_processes(monkeypatch):
    """Worker processes even for a handful of rows."""
    monkeypatch.setattr(pipeline, "ROWS_PER_PROCESS", {"convert": 2, "tokenize": 2})


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "zephyr-cache"))


# ------------------------------------------------------------------------------------------ conversion + validation
CASES = {
    "sft clean": ("sft", lambda: chats(40), ()),
    "sft bad rows": ("sft", lambda: with_bad(chats(40), BAD_SFT, [3, 17, 18, 40]), ()),
    "sft bad first": ("sft", lambda: with_bad(chats(10), BAD_SFT, [0]), ()),
    "alpaca": ("sft", lambda: [{"instruction": f"do {i}", "input": "" if i % 2 else "ctx", "output": f"done {i}"}
                               for i in range(30)] + [{"instruction": " ", "input": "", "output": "x"}], ()),
    "preference": ("preference", lambda: with_bad(pairs(30), BAD_PREF, [5, 29]), ()),
}


@pytest.mark.parametrize("workers", [False, True], ids=["1 process", "2 processes"])
@pytest.mark.parametrize("policy", ["error", "drop"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_conversion_and_validation_match_the_row_by_row_reference(case, policy, workers, tmp_path, request):
    if workers:
        request.getfixturevalue("many_processes")
    kind, make, _ = CASES[case]
    path = write_jsonl(tmp_path / "rows.jsonl", make())
    raw = load_source(DatasetSource(id=str(path)))
    name = f"{path} [train]"
    try:
        expected, bad = reference_canonical(raw, name, kind, policy)
    except DataError as err:
        with pytest.raises(DataError) as got:
            canonical_rows(raw, DatasetSource(id=str(path)), kind, policy, DataReport(), num_proc=2)
        assert str(got.value) == str(err)  # the same first bad row, the same words
        return
    report = DataReport()
    got = canonical_rows(raw, DatasetSource(id=str(path)), kind, policy, report, num_proc=2)
    assert got.to_list() == expected  # the same rows, in the same order
    assert got.features == datasets.Dataset.from_list(expected).features
    assert report.dropped == ({"invalid": len(bad)} if bad else {})


def test_bad_utf8_is_reported_at_its_row_whatever_the_policy(tmp_path, many_processes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    completion = pa.array([b"fine", b"", b"ok", b"caf\xe9", b"fine"], pa.binary()).view(pa.string())
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": list("abcde"), "completion": completion}), path)
    raw = load_source(DatasetSource(id=str(path)))
    with pytest.raises(DataError, match=r"\[train\]: row 1: 'completion' must be|\[train\]: row 1: message 1"):
        canonical_rows(raw, DatasetSource(id=str(path)), "sft", "error", DataReport(), num_proc=2)
    with pytest.raises(DataError, match=r"\[train\]: row 3: text is not valid UTF-8 \(unexpected end of data\)"):
        canonical_rows(raw, DatasetSource(id=str(path)), "sft", "drop", DataReport(), num_proc=2)


# ------------------------------------------------------------------------------------------ token lengths
@pytest.mark.parametrize("workers", [False, True], ids=["1 process", "2 processes"])
@pytest.mark.parametrize("kind", ["sft", "preference"])
def test_batched_token_lengths_equal_one_call_per_row(kind, workers, any_tiny_dir, request):
    if workers:
        request.getfixturevalue("many_processes")
    tokenizer = load_tokenizer_of(any_tiny_dir)
    ds = datasets.Dataset.from_list(chats(25) if kind == "sft" else pairs(25))
    if kind == "sft":
        ds = ds.remove_columns("prompt_id")
    assert token_lengths(ds, tokenizer, kind, num_proc=2) == reference_lengths(ds, tokenizer, kind)


def load_tokenizer_of(tiny):
    from zephyr.configs import ModelArguments

    return load_tokenizer(ModelArguments(model_name_or_path=str(tiny / "model")))


# ------------------------------------------------------------------------------------------ dSFT: one tokenization
def sft_trainers(tiny, tmp_path, path, **overrides):
    """(zephyr's trainer, TRL's trainer on the reference rows) with the same settings."""
    model_args, data_args, training_args = stage_configs(
        "sft", tiny, tmp_path, dataset_name=str(path), dataset_train_split="train", dataset_test_split=None,
        max_train_samples=None, **overrides)
    zephyr_trainer, tokenizer, report = sft.build_trainer(model_args, data_args, training_args)
    reference = reference_sft_sets(path, tokenizer, training_args.max_length, data_args.long_rows)
    trl_trainer = SFTTrainer(model=load_model(model_args), args=training_args, train_dataset=reference,
                             processing_class=load_tokenizer(model_args))
    return zephyr_trainer, trl_trainer, report


def trained_on(trainer):
    ds = trainer.train_dataset
    return {column: list(ds[column]) for column in ("input_ids", "labels", "seq_lengths") if column in ds.column_names}


SFT_SETTINGS = {
    "drop, assistant loss": {"long_rows": "drop"},
    "truncate, assistant loss": {"long_rows": "truncate"},
    "drop, full loss": {"long_rows": "drop", "assistant_only_loss": False},
    "truncate, packing": {"long_rows": "truncate", "packing": True},
    "no max_length": {"max_length": None},
}


@pytest.mark.parametrize("setting", sorted(SFT_SETTINGS))
def test_sft_trains_on_the_same_tokens_and_labels_as_trl_tokenizing_the_reference_rows(setting, any_tiny_dir,
                                                                                      tmp_path, fresh_cache):
    path = write_jsonl(tmp_path / "chats.jsonl", chats(48, median=10))
    overrides = {"max_length": 96, **SFT_SETTINGS[setting]}
    ours, theirs, report = sft_trainers(any_tiny_dir, tmp_path, path, **overrides)
    assert "input_ids" in load_prepared(report)  # zephyr handed TRL token ids: TRL did not tokenize again
    expected = trained_on(theirs)
    assert trained_on(ours) == expected
    if setting.startswith("drop"):
        assert report.dropped.get("too long", 0) > 0  # the setting does drop rows


def load_prepared(report):
    """The columns of the newest prepared train set under ZEPHYR_CACHE."""
    root = Path(os.environ["ZEPHYR_CACHE"]) / "datasets"
    newest = max((p for p in root.glob("sft-train-*") if (p / "state.json").is_file()), key=lambda p: p.stat().st_mtime)
    return datasets.load_from_disk(str(newest)).column_names


def test_sft_long_row_error_names_the_same_row_as_the_reference(tiny_dir, tmp_path, fresh_cache):
    path = write_jsonl(tmp_path / "chats.jsonl", chats(48, median=10))
    model_args, data_args, training_args = stage_configs(
        "sft", tiny_dir, tmp_path, dataset_name=str(path), dataset_train_split="train", dataset_test_split=None,
        max_train_samples=None, long_rows="error", max_length=96)
    tokenizer = load_tokenizer(model_args)
    with pytest.raises(DataError) as expected:
        reference_sft_sets(path, tokenizer, 96, "error")
    with pytest.raises(DataError) as got:
        sft.build_trainer(model_args, data_args, training_args)
    assert str(got.value) == str(expected.value)


def test_sft_tokenizes_with_several_processes_the_same(tiny_dir, tmp_path, fresh_cache, many_processes):
    path = write_jsonl(tmp_path / "chats.jsonl", with_bad(chats(40, median=10), BAD_SFT, [2, 30]))
    ours, theirs, _ = sft_trainers(tiny_dir, tmp_path, path, max_length=96, invalid_rows="drop",
                                   dataset_num_proc=2)
    assert trained_on(ours) == trained_on(theirs)


def test_a_template_without_generation_markers_leaves_tokenization_to_trl(tiny_dir, tmp_path, fresh_cache):
    chatml = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + eos_token }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    tokenizer = load_tokenizer_of(tiny_dir)
    tokenizer.chat_template = chatml
    args = stage_configs("sft", tiny_dir, tmp_path)[2]
    assert sft.trainer_tokenization(tokenizer, args) is None  # TRL has no training version of this template
    args.assistant_only_loss = False
    assert sft.trainer_tokenization(tokenizer, args) == pipeline.ChatTokenization(None, False)


# ------------------------------------------------------------------------------------------ prepared once
def test_a_second_preparation_reads_the_first(tmp_path, fresh_cache, caplog):
    path = write_jsonl(tmp_path / "chats.jsonl", with_bad(chats(30), BAD_SFT, [4]))
    args = DataArguments(dataset_name=str(path), invalid_rows="drop")
    with caplog.at_level(logging.INFO, logger="zephyr.data.pipeline"):
        first = prepare_datasets(args, "sft")
        second = prepare_datasets(args, "sft")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert [line.split(" (")[0] for line in lines] == ["data: prepared", "data: read from cache"]
    assert second[0].to_list() == first[0].to_list() and second[2] == first[2]
    assert second[2].dropped == {"invalid": 1}
    # anything the result depends on makes a new preparation: a setting, the data file
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zephyr.data.pipeline"):
        prepare_datasets(DataArguments(dataset_name=str(path), invalid_rows="drop", max_train_samples=5), "sft")
        write_jsonl(path, chats(12, seed=1))
        changed = prepare_datasets(args, "sft")
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.getMessage().startswith("data: ")] == \
        ["data: prepared", "data: prepared"]
    assert len(changed[0]) == 12


@pytest.mark.slow
def test_two_processes_prepare_once(tiny_dir, tmp_path):
    """`zephyr sft --accelerate-config cpu_2proc`: rank 0 prepares, rank 1 reads what it wrote."""
    args = [f"model_name_or_path={tiny_dir / 'model'}", "dtype=float32", f"dataset_name={tiny_dir / 'data' / 'sft'}",
            "dataset_train_split=train_sft", "dataset_test_split=null", "max_train_samples=32", "long_rows=drop",
            "max_length=64", f"output_dir={tmp_path / 'out'}", "per_device_train_batch_size=2", "max_steps=1",
            "save_strategy=no", "eval_strategy=no", "report_to=none", "gradient_checkpointing=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ZEPHYR_CACHE": str(tmp_path / "cache"),
           "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "zephyr.cli", "sft", *args, "--accelerate-config", "cpu_2proc"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert log.count("rank 1 of 2") == 1  # two processes ran
    assert log.count("data: prepared (") == 1
    assert log.count("data: read from cache (") == 1


def test_nothing_is_written_into_a_source_folder(tmp_path, fresh_cache, tiny_dir):
    """A `save_to_disk` folder may be the user's own, and read-only: preparing reads it and writes elsewhere."""
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(with_bad(chats(30), BAD_SFT, [3])).save_to_disk(str(folder))
    before = sorted(p.name for p in folder.iterdir())
    train, _, report = prepare_datasets(DataArguments(dataset_name=str(folder), invalid_rows="drop",
                                                      dataset_test_split=None), "sft",
                                        load_tokenizer_of(tiny_dir), None, tokenization=pipeline.ChatTokenization())
    assert sorted(p.name for p in folder.iterdir()) == before
    assert len(train) == report.train_rows == 30 and "input_ids" in train.column_names
    assert not list((Path(os.environ["ZEPHYR_CACHE"]) / "datasets" / "work").iterdir())  # intermediates removed


def test_a_mask_without_assistant_tokens_is_an_error_naming_the_row(tmp_path, fresh_cache, tiny_dir):
    """TRL refuses such rows when it tokenizes; zephyr tokenizes for it, so zephyr must refuse them too."""
    tokenizer = load_tokenizer_of(tiny_dir)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}"
                               "{% if m['role'] == 'assistant' %}{% generation %}{% endgeneration %}{% endif %}"
                               "{% endfor %}")
    path = write_jsonl(tmp_path / "chats.jsonl", chats(5))
    with pytest.raises(DataError, match=r"^train: row 0: no token is in the assistant-only loss mask \(5 such rows\)"):
        prepare_datasets(DataArguments(dataset_name=str(path), dataset_test_split=None), "sft", tokenizer, None,
                         tokenization=pipeline.ChatTokenization(None, True))
