"""The data layer (zephyr/data): loading every local format, schema conversion, row validation, length checks,
mixtures, the handbook's legacy mixer and decontamination. Datasets are tiny and written into tmp_path."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zephyr.compat import translate_legacy_keys
from zephyr.configs import DataArguments, DatasetSource
from zephyr.data import prepare_datasets
from zephyr.data.loading import DataError, load_source
from zephyr.data.pipeline import chat_ids
from zephyr.data.schemas import RowError, convert_row, detect_schema
from zephyr.data.validation import conversation_problem, preference_problem, sft_problem

# ---------------------------------------------------------------------------------------------------------------
# helpers


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path, rows):
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def write_hub_layout(folder, splits):
    """`folder/data/<split>-00000-of-00001.parquet`, the layout of a dataset repo on the hub."""
    (folder / "data").mkdir(parents=True)
    for split, rows in splits.items():
        write_parquet(folder / "data" / f"{split}-00000-of-00001.parquet", rows)
    return folder


def sft_rows(n, tag="q"):
    return [{"messages": [u(f"{tag} question {i}"), a(f"{tag} answer {i}")]} for i in range(n)]


def pref_rows(n, tag="p"):
    """ultrafeedback_binarized rows."""
    rows = []
    for i in range(n):
        q = f"{tag} prompt {i}"
        chosen, rejected = [u(q), a(f"good {i}")], [u(q), a(f"bad {i}")]
        rows.append({"prompt": q, "prompt_id": f"id{i}", "chosen": chosen, "rejected": rejected,
                     "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.0})
    return rows


def canonical_pref(q, good, bad):
    return {"prompt": [u(q)], "chosen": [a(good)], "rejected": [a(bad)]}


def as_set(rows):
    """Rows as a multiset (the train set is shuffled)."""
    return Counter(json.dumps(r, sort_keys=True) for r in rows)


def prepare_file(path, kind, **kwargs):
    return prepare_datasets(DataArguments(dataset_name=str(path), **kwargs), kind)


def mixture(*sources, **extra):
    return DataArguments(dataset_mixture={"datasets": list(sources), **extra})


# ---------------------------------------------------------------------------------------------------------------
# 1. loading

FLAT_ROWS = [  # strings only, so that every format (csv too) can hold them
    {"prompt": "Add 2 and 2.", "completion": "4"},
    {"prompt": "Spell the word for not available.", "completion": "NA"},
    {"prompt": "Say hello, politely", "completion": "Hello, there!"},
]
FLAT_CANONICAL = [{"messages": [u(r["prompt"]), a(r["completion"])]} for r in FLAT_ROWS]


def write_flat(path, fmt):
    if fmt == "json":
        path.write_text(json.dumps(FLAT_ROWS), encoding="utf-8")
    elif fmt == "jsonl":
        write_jsonl(path, FLAT_ROWS)
    elif fmt == "parquet":
        write_parquet(path, FLAT_ROWS)
    else:
        path.write_text('prompt,completion\nAdd 2 and 2.,4\nSpell the word for not available.,NA\n'
                        '"Say hello, politely","Hello, there!"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "csv"])
def test_load_local_file_formats(tmp_path, fmt):
    path = write_flat(tmp_path / f"rows.{fmt}", fmt)
    ds = load_source(DatasetSource(id=str(path)))
    assert ds.to_list() == FLAT_ROWS  # csv too: "4" and "NA" stay text
    train, test, report = prepare_file(path, "sft")
    assert as_set(train) == as_set(FLAT_CANONICAL)
    assert test is None  # a file has one split; the default test split is skipped
    assert report.loaded == {f"{path} [train]": 3}
    assert (report.train_rows, report.eval_rows, report.dropped) == (3, 0, {})


def test_csv_empty_cells_are_empty_strings(tmp_path):
    path = tmp_path / "alpaca.csv"
    path.write_text("instruction,input,output\nDouble it,21,42\nName a color,,None\n", encoding="utf-8")
    train, _, _ = prepare_file(path, "sft")
    assert as_set(train) == as_set([
        {"messages": [u("Double it\n\n21"), a("42")]},
        {"messages": [u("Name a color"), a("None")]},
    ])


def test_load_save_to_disk_dataset(tmp_path):
    rows = sft_rows(5)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert load_source(DatasetSource(id=str(tmp_path / "single"))).to_list() == rows
    train, test, report = prepare_file(tmp_path / "single", "sft")
    assert as_set(train) == as_set(rows)
    # One saved Dataset has one split: the training rows must not come back as the eval set.
    assert test is None
    assert list(report.loaded.values()) == [5]


def test_load_save_to_disk_dataset_dict(tmp_path):
    folder = tmp_path / "dict"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list(sft_rows(6, "tr")),
        "test": datasets.Dataset.from_list(sft_rows(2, "te")),
    }).save_to_disk(str(folder))
    train, test, report = prepare_file(folder, "sft")
    assert as_set(train) == as_set(sft_rows(6, "tr"))
    assert test.to_list() == sft_rows(2, "te")
    assert report.loaded == {f"{folder} [train]": 6, f"{folder} [test]": 2}
    with pytest.raises(DataError) as err:
        load_source(DatasetSource(id=str(folder), split="validation"))
    assert str(folder) in str(err.value) and "no split 'validation'" in str(err.value)
    assert "['test', 'train']" in str(err.value)


def test_load_hub_layout_named_splits(tmp_path):
    folder = write_hub_layout(tmp_path / "prefs", {"train_prefs": pref_rows(6, "tr"), "test_prefs": pref_rows(3, "te")})
    assert len(load_source(DatasetSource(id=str(folder), split="train_prefs"))) == 6
    assert load_source(DatasetSource(id=str(folder), split="test_prefs")).to_list() == pref_rows(3, "te")
    train, test, report = prepare_file(folder, "preference", dataset_train_split="train_prefs",
                                       dataset_test_split="test_prefs")
    assert as_set(train) == as_set([canonical_pref(f"tr prompt {i}", f"good {i}", f"bad {i}") for i in range(6)])
    assert test.to_list() == [canonical_pref(f"te prompt {i}", f"good {i}", f"bad {i}") for i in range(3)]
    assert report.loaded == {f"{folder} [train_prefs]": 6, f"{folder} [test_prefs]": 3}
    # The default test split ("test") does not exist here: no eval set, no error.
    train, test, _ = prepare_file(folder, "preference", dataset_train_split="train_prefs")
    assert (len(train), test) == (6, None)


def test_hub_layout_unknown_split_names_source_and_split(tmp_path):
    folder = write_hub_layout(tmp_path / "prefs", {"train_prefs": pref_rows(2)})
    with pytest.raises(DataError) as err:
        prepare_file(folder, "preference", dataset_train_split="train_sft")
    assert f"{folder} (split train_sft)" in str(err.value)
    # An explicitly named test split that is missing is an error too (only the default "test" is optional).
    with pytest.raises(DataError, match="split test_prefs"):
        prepare_file(folder, "preference", dataset_train_split="train_prefs", dataset_test_split="test_prefs")


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "rows.jsonl"
    with pytest.raises(DataError) as err:
        prepare_file(missing, "sft")
    assert str(err.value) == f"{missing}: no such file or folder"


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError) as err:
        load_source(DatasetSource(id=str(path)))
    assert str(path) in str(err.value) and "unsupported file type" in str(err.value)


def test_columns_selection_and_missing_column(tmp_path):
    rows = [{"prompt": f"q{i}", "prompt_id": str(i), "messages": [u(f"q{i}"), a(f"a{i}")]} for i in range(3)]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    ds = load_source(DatasetSource(id=str(path), columns=["messages"]))
    assert ds.column_names == ["messages"]
    assert ds.to_list() == [{"messages": r["messages"]} for r in rows]
    with pytest.raises(DataError) as err:
        prepare_datasets(mixture({"id": str(path), "columns": ["messages", "score"]}), "sft")
    assert f"{path} (split train): missing columns ['score']" in str(err.value)
    assert "'prompt_id'" in str(err.value)  # says which columns there are


# ---------------------------------------------------------------------------------------------------------------
# 2. schema conversion


def test_ultrachat_messages_schema(tmp_path):
    rows = [
        {"prompt": "Hi", "prompt_id": "a1", "messages": [u("Hi"), a("Hello!")]},
        {"prompt": "Count", "prompt_id": "a2",
         "messages": [s("Be terse."), u("Count"), a("1 2 3"), u("More"), a("4 5")]},
    ]
    train, _, _ = prepare_file(write_jsonl(tmp_path / "ultrachat.jsonl", rows), "sft")
    assert train.column_names == ["messages"]
    assert as_set(train) == as_set([{"messages": r["messages"]} for r in rows])


def test_alpaca_schema(tmp_path):
    rows = [
        {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
        {"instruction": "Name a prime.", "input": "", "output": "7"},
        {"instruction": "Name an even number.", "input": None, "output": "2"},
        {"instruction": "Say yes.", "input": "  \n", "output": "yes"},
    ]
    train, _, _ = prepare_file(write_jsonl(tmp_path / "alpaca.jsonl", rows), "sft")
    assert as_set(train) == as_set([
        {"messages": [u("Translate to French.\n\ncat"), a("chat")]},
        {"messages": [u("Name a prime."), a("7")]},
        {"messages": [u("Name an even number."), a("2")]},
        {"messages": [u("Say yes."), a("yes")]},
    ])


def test_prompt_completion_schema_string_and_conversational():
    assert convert_row({"prompt": "2+2?", "completion": "4"}, "prompt_completion") == {"messages": [u("2+2?"), a("4")]}
    row = {"prompt": [s("Be nice."), u("Hi")], "completion": [a("Hello")]}
    assert convert_row(row, "prompt_completion") == {"messages": [s("Be nice."), u("Hi"), a("Hello")]}


def test_sft_on_preference_data_uses_chosen(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"chosen": [u("q"), a("good")], "rejected": [u("q"), a("bad")]}])
    train, _, _ = prepare_file(path, "sft")
    assert train.to_list() == [{"messages": [u("q"), a("good")]}]


def test_ultrafeedback_binarized_schema(tmp_path):
    rows = pref_rows(3)
    rows[1]["chosen"] = rows[1]["messages"] = [s("Be kind."), u("p prompt 1"), a("good 1")]
    rows[1]["rejected"] = [s("Be kind."), u("p prompt 1"), a("bad 1")]
    train, _, _ = prepare_file(write_jsonl(tmp_path / "uf.jsonl", rows), "preference")
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert as_set(train) == as_set([
        canonical_pref("p prompt 0", "good 0", "bad 0"),
        {"prompt": [s("Be kind."), u("p prompt 1")], "chosen": [a("good 1")], "rejected": [a("bad 1")]},
        canonical_pref("p prompt 2", "good 2", "bad 2"),
    ])


def test_explicit_prompt_conversational_schema(tmp_path):
    rows = [
        {"prompt": [u("Hi")], "chosen": [a("Hello!")], "rejected": [a("Go away.")]},
        {"prompt": [s("Terse."), u("1+1?"), a("2"), u("2+2?")], "chosen": [a("4")], "rejected": [a("5")]},
    ]
    train, _, _ = prepare_file(write_jsonl(tmp_path / "explicit.jsonl", rows), "preference")
    assert as_set(train) == as_set(rows)


def test_implicit_prompt_schema(tmp_path):
    rows = [
        {"chosen": [u("Hi"), a("Hello!")], "rejected": [u("Hi"), a("Go away.")]},
        {"chosen": [u("1+1?"), a("2"), u("2+2?"), a("4")], "rejected": [u("1+1?"), a("2"), u("2+2?"), a("5")]},
    ]
    assert detect_schema(["chosen", "rejected"], "preference") == "implicit_prompt"
    train, _, _ = prepare_file(write_jsonl(tmp_path / "implicit.jsonl", rows), "preference")
    assert as_set(train) == as_set([
        canonical_pref("Hi", "Hello!", "Go away."),
        {"prompt": [u("1+1?"), a("2"), u("2+2?")], "chosen": [a("4")], "rejected": [a("5")]},
    ])


def test_explicit_string_schema(tmp_path):
    rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}, {"prompt": "2+2?", "chosen": "4", "rejected": "5"}]
    train, _, _ = prepare_file(write_jsonl(tmp_path / "strings.jsonl", rows), "preference")
    assert as_set(train) == as_set([canonical_pref("Hi", "Hello!", "Go away."), canonical_pref("2+2?", "4", "5")])


def test_raw_ultrafeedback_asks_to_binarize(tmp_path):
    rows = [{"instruction": "Hi", "completions": [{"response": "Hello", "overall_score": 7.0}]}]
    path = write_jsonl(tmp_path / "raw_uf.jsonl", rows)
    with pytest.raises(DataError) as err:
        prepare_file(path, "preference")
    assert str(err.value).startswith(f"{path} [train]: this is raw UltraFeedback")
    assert "binarize" in str(err.value)


@pytest.mark.parametrize("kind, expected", [("sft", "match no SFT schema"), ("preference", "match no preference schema")])
def test_unknown_schema_lists_columns(tmp_path, kind, expected):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as err:
        prepare_file(path, kind)
    assert str(err.value).startswith(f"{path} [train]: columns ['answer', 'question'] {expected}")


# ---------------------------------------------------------------------------------------------------------------
# 3. invalid rows: error names source and row; drop removes exactly the bad rows, counts and logs them

GOOD_SFT = sft_rows(4, "ok")
GOOD_PREF = [{"prompt": [u(f"ok {i}")], "chosen": [a(f"yes {i}")], "rejected": [a(f"no {i}")]} for i in range(4)]

INVALID_CASES = {  # name -> (kind, bad row, fragment of the reason)
    "empty content": ("sft", {"messages": [u("hi"), a("  \n")]}, "message 1 (assistant): empty content"),
    "roles not alternating": ("sft", {"messages": [u("hi"), u("hi again"), a("yo")]},
                              "message 1: roles must alternate user/assistant; expected assistant, got user"),
    "unknown role": ("sft", {"messages": [u("hi"), {"role": "bot", "content": "yo"}]}, "unknown role 'bot'"),
    "message without content": ("sft", {"messages": [u("hi"), {"role": "assistant"}]},
                                "'messages'[1] must be a {role, content} message, got {'role': 'assistant'}"),
    "ends with user": ("sft", {"messages": [u("hi"), a("yo"), u("bye")]},
                       "conversation must end with an assistant message, ends with user"),
    "only system": ("sft", {"messages": [s("sys")]}, "only a system message"),
    "chosen identical to rejected": ("preference", {"prompt": [u("q")], "chosen": [a("same ")], "rejected": [a("same")]},
                                     "chosen is identical to rejected"),
    "different prompts": ("preference", {"chosen": [u("q1"), a("x")], "rejected": [u("q2"), a("y")]},
                          "'chosen' and 'rejected' do not share the same prompt messages"),
    "missing rejected": ("preference", {"prompt": [u("q")], "chosen": [a("x")], "rejected": None},
                         "'rejected' must be a list of {role, content} messages, got NoneType"),
    "empty chosen": ("preference", {"prompt": [u("q")], "chosen": [a("")], "rejected": [a("y")]}, "chosen: empty content"),
    "prompt ends with assistant": ("preference", {"prompt": [u("q"), a("x")], "chosen": [a("y")], "rejected": [a("z")]},
                                   "prompt: conversation must end with a user message"),
}


def invalid_dataset(tmp_path, case):
    """Six rows, bad at 1 and 4."""
    kind, bad, _ = INVALID_CASES[case]
    good = GOOD_SFT if kind == "sft" else GOOD_PREF
    rows = [good[0], bad, good[1], good[2], bad, good[3]]
    return kind, write_jsonl(tmp_path / "rows.jsonl", rows), good


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_invalid_row_is_an_error_naming_source_and_row(tmp_path, case):
    kind, path, _ = invalid_dataset(tmp_path, case)
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path)), kind, tokenizer=None)
    message = str(err.value)
    assert message.startswith(f"{path} [train]: row 1: ")
    assert INVALID_CASES[case][2] in message
    assert "invalid_rows: drop" in message


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_invalid_rows_dropped_counted_and_logged(tmp_path, case, caplog):
    kind, path, good = invalid_dataset(tmp_path, case)
    with caplog.at_level(logging.WARNING, logger="zephyr.data.pipeline"):
        train, _, report = prepare_datasets(DataArguments(dataset_name=str(path), invalid_rows="drop"), kind)
    assert as_set(train) == as_set(good)
    assert report.dropped == {"invalid": 2}
    assert report.train_rows == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{path} [train]: dropped 2 invalid rows of 6" in warnings[0]
    assert "row 1: " in warnings[0] and "row 4: " in warnings[0]


def test_invalid_rows_in_eval_source_are_checked_too(tmp_path):
    train_path = write_jsonl(tmp_path / "train.jsonl", GOOD_SFT)
    eval_path = write_jsonl(tmp_path / "eval.jsonl", [GOOD_SFT[0], GOOD_SFT[1], {"messages": [u("q"), a("")]}])
    sources = ({"id": str(train_path)}, {"id": str(eval_path), "role": "test"})
    with pytest.raises(DataError, match=rf"^{re.escape(str(eval_path))} \[train\]: row 2: message 1 \(assistant\): empty"):
        prepare_datasets(mixture(*sources), "sft")
    args = mixture(*sources)
    args.invalid_rows = "drop"
    _, test, report = prepare_datasets(args, "sft")
    assert test.to_list() == GOOD_SFT[:2]
    assert report.dropped == {"invalid": 1}


def test_all_rows_invalid_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [u("hi")]}] * 3)
    with pytest.raises(DataError, match=r"no valid rows left \(3 invalid\)"):
        prepare_file(path, "sft", invalid_rows="drop")


# ---------------------------------------------------------------------------------------------------------------
# 4. rows longer than max_length (the embedded tiny tokenizer; `tiny_dir` is the shared fixture in conftest.py)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir / "model"))


LONG_TEXT = " ".join(["apple river stone cloud"] * 40)


def long_sft_file(tmp_path):
    rows = sft_rows(5, "short")
    rows.insert(2, {"messages": [u("Repeat the words."), a(LONG_TEXT)]})
    return write_jsonl(tmp_path / "rows.jsonl", rows), rows


def test_long_rows_error_names_row_and_token_count(tmp_path, tokenizer):
    path, rows = long_sft_file(tmp_path)
    lengths = [len(chat_ids(tokenizer, r["messages"])) for r in rows]
    long_len, short_max = lengths[2], max(lengths[:2] + lengths[3:])
    assert short_max < 48 < long_len
    # Where the long row lands in the shuffled train set: truncate keeps every row in the same order.
    kept, _, _ = prepare_datasets(DataArguments(dataset_name=str(path), long_rows="truncate"), "sft", tokenizer, 48)
    position = [r["messages"][1]["content"] for r in kept].index(LONG_TEXT)
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path)), "sft", tokenizer, max_length=48)
    first_user = kept[position]["messages"][0]["content"]
    assert str(err.value).startswith(
        f"train: row {position} (first user turn {first_user!r}) has {long_len} tokens, more than max_length=48 "
        "(1 such rows)"
    )


def test_long_rows_drop_and_truncate(tmp_path, tokenizer, caplog):
    path, rows = long_sft_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="zephyr.data.pipeline"):
        train, _, report = prepare_datasets(DataArguments(dataset_name=str(path), long_rows="drop"), "sft", tokenizer, 48)
    assert as_set(train) == as_set(rows[:2] + rows[3:])
    assert report.dropped == {"too long": 1} and report.train_rows == 5
    assert any("dropped 1 of 6 rows longer than max_length=48" in r.getMessage() for r in caplog.records)

    train, _, report = prepare_datasets(DataArguments(dataset_name=str(path), long_rows="truncate"), "sft", tokenizer, 48)
    assert as_set(train) == as_set(rows)  # the trainer truncates; nothing is dropped here
    assert report.dropped == {}

    train, _, report = prepare_datasets(DataArguments(dataset_name=str(path)), "sft", tokenizer, max_length=None)
    assert len(train) == 6 and report.dropped == {}


def test_long_preference_rows(tmp_path, tokenizer):
    rows = [{"prompt": [u(f"q{i}")], "chosen": [a(f"yes {i}")], "rejected": [a(f"no {i}")]} for i in range(4)]
    long_answer = {"prompt": [u("qa")], "chosen": [a("short")], "rejected": [a(LONG_TEXT)]}
    long_prompt = {"prompt": [u(LONG_TEXT)], "chosen": [a("ok")], "rejected": [a("no")]}
    path = write_jsonl(tmp_path / "prefs.jsonl", rows + [long_answer, long_prompt])
    _, _, report = prepare_datasets(DataArguments(dataset_name=str(path), long_rows="drop"), "preference", tokenizer, 48)
    assert report.dropped == {"too long": 2} and report.train_rows == 4
    # truncate keeps the long answer, but a prompt that alone fills max_length is never trainable
    train, _, report = prepare_datasets(DataArguments(dataset_name=str(path), long_rows="truncate"), "preference",
                                        tokenizer, 48)
    assert as_set(train) == as_set(rows + [long_answer])
    assert report.dropped == {"too long": 1}


def test_long_rows_in_eval_set(tmp_path, tokenizer):
    train_path = write_jsonl(tmp_path / "train.jsonl", sft_rows(3))
    eval_rows = sft_rows(2, "e") + [{"messages": [u("Repeat."), a(LONG_TEXT)]}]
    eval_path = write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    args = mixture({"id": str(train_path)}, {"id": str(eval_path), "role": "test"})
    with pytest.raises(DataError, match=r"^eval: row 2 \(first user turn .*\) has \d+ tokens"):
        prepare_datasets(args, "sft", tokenizer, 48)
    args.long_rows = "drop"
    train, test, report = prepare_datasets(args, "sft", tokenizer, 48)
    assert (len(train), test.to_list(), report.dropped) == (3, eval_rows[:2], {"too long": 1})


# ---------------------------------------------------------------------------------------------------------------
# 5. mixtures


@pytest.fixture
def two_sources(tmp_path):
    big = write_parquet(tmp_path / "big.parquet", sft_rows(100, "big"))
    small = write_jsonl(tmp_path / "small.jsonl", sft_rows(40, "small"))
    return big, small


def tags(ds):
    return Counter(r["messages"][0]["content"] for r in ds)


def test_mixture_weights(two_sources):
    big, small = two_sources
    train, test, report = prepare_datasets(mixture({"id": str(big), "weight": 0.5}, {"id": str(small), "weight": 2.0}),
                                           "sft")
    assert len(train) == 130 and test is None
    counts = tags(train)
    big_counts = {k: v for k, v in counts.items() if k.startswith("big")}
    small_counts = {k: v for k, v in counts.items() if k.startswith("small")}
    assert len(big_counts) == 50 and set(big_counts.values()) == {1}  # half of big, no repeats
    assert small_counts == {f"small question {i}": 2 for i in range(40)}  # every small row twice
    assert report.loaded == {f"{big} [train]": 100, f"{small} [train]": 40}
    assert (report.train_rows, report.eval_rows) == (130, 0)


def test_mixture_fractional_repeat_and_zero_weight(two_sources):
    big, small = two_sources
    train, _, _ = prepare_datasets(mixture({"id": str(big), "weight": 0}, {"id": str(small), "weight": 1.25}), "sft")
    counts = tags(train)
    assert len(train) == 50 and set(counts) == {f"small question {i}" for i in range(40)}
    assert sorted(Counter(counts.values()).items()) == [(1, 30), (2, 10)]


def test_mixture_test_role_is_eval_set_untouched(two_sources, tmp_path):
    big, small = two_sources
    eval_rows = sft_rows(7, "held")
    held = write_jsonl(tmp_path / "held.jsonl", eval_rows)
    train, test, report = prepare_datasets(
        mixture({"id": str(big), "weight": 0.5}, {"id": str(held), "role": "test", "weight": 0.5},
                {"id": str(small)}), "sft")
    assert test.to_list() == eval_rows  # whole, in order, weight ignored
    assert len(train) == 90 and not any(k.startswith("held") for k in tags(train))
    assert (report.train_rows, report.eval_rows) == (90, 7)


@pytest.mark.parametrize("size, n_eval", [(0.2, 28), (10, 10)])
def test_mixture_test_split_size(two_sources, size, n_eval):
    big, small = two_sources
    train, test, report = prepare_datasets(mixture({"id": str(big)}, {"id": str(small)}, test_split_size=size), "sft")
    assert (len(train), len(test)) == (140 - n_eval, n_eval)
    assert not set(tags(train)) & set(tags(test))  # carved out, not copied
    assert tags(train) + tags(test) == tags(sft_rows(100, "big") + sft_rows(40, "small"))
    assert (report.train_rows, report.eval_rows) == (140 - n_eval, n_eval)


def test_mixture_test_split_size_adds_to_test_role(two_sources, tmp_path):
    big, _ = two_sources
    held = write_jsonl(tmp_path / "held.jsonl", sft_rows(7, "held"))
    train, test, _ = prepare_datasets(mixture({"id": str(big)}, {"id": str(held), "role": "test"}, test_split_size=10),
                                      "sft")
    assert (len(train), len(test)) == (90, 17)
    assert test.to_list()[:7] == sft_rows(7, "held")


def test_mixture_seed_fixes_order(two_sources):
    big, small = two_sources

    def order(seed):
        train, _, _ = prepare_datasets(
            mixture({"id": str(big), "weight": 0.5}, {"id": str(small)}, seed=seed), "sft")
        return [r["messages"][0]["content"] for r in train]

    first, again, other = order(1), order(1), order(2)
    assert first == again
    assert first != other
    assert {t for t in first if t.startswith("big")} != {t for t in other if t.startswith("big")}  # another half


@pytest.mark.parametrize("mixture_value, expected", [
    ({"datasets": []}, "'datasets' must list at least one source"),
    ({"datasets": [{"id": "x"}], "shuffle": True}, "unknown keys ['shuffle']"),
    ({"datasets": [{"id": "x", "fraction": 0.5}]}, "dataset_mixture.datasets[0]: "),
    ({"datasets": [{"id": "x", "role": "validation"}]}, "dataset_mixture.datasets[0]: role must be train or test"),
])
def test_mixture_config_errors(mixture_value, expected):
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_mixture=mixture_value), "sft")
    assert expected in str(err.value)


def test_mixture_needs_a_train_source_and_nonnegative_weights(two_sources):
    big, _ = two_sources
    with pytest.raises(DataError, match="no training source"):
        prepare_datasets(mixture({"id": str(big), "role": "test"}), "sft")
    with pytest.raises(DataError, match="weight must be >= 0, got -1"):
        prepare_datasets(mixture({"id": str(big), "weight": -1}), "sft")
    with pytest.raises(DataError, match="not both"):
        prepare_datasets(DataArguments(dataset_name=str(big), dataset_mixture={"datasets": [{"id": str(big)}]}), "sft")
    with pytest.raises(DataError, match="no data"):
        prepare_datasets(DataArguments(), "sft")


def test_max_train_and_eval_samples(two_sources, tmp_path):
    big, _ = two_sources
    held = write_jsonl(tmp_path / "held.jsonl", sft_rows(7, "held"))
    args = mixture({"id": str(big)}, {"id": str(held), "role": "test"})
    args.max_train_samples, args.max_eval_samples = 12, 3
    train, test, report = prepare_datasets(args, "sft")
    assert (len(train), test.to_list()) == (12, sft_rows(3, "held"))
    assert (report.train_rows, report.eval_rows) == (12, 3)


# ---------------------------------------------------------------------------------------------------------------
# 6. the alignment-handbook's dataset_mixer / dataset_splits


def test_legacy_dataset_mixer(tmp_path):
    folder = write_hub_layout(tmp_path / "uf", {"train_prefs": pref_rows(20, "tr"), "test_prefs": pref_rows(6, "te")})
    values = translate_legacy_keys({"dataset_mixer": {str(folder): 0.5}, "dataset_splits": ["train_prefs", "test_prefs"]},
                                   stage="dpo", source="x")
    assert set(values) == {"dataset_mixture"}
    train, test, report = prepare_datasets(DataArguments(dataset_mixture=values["dataset_mixture"]), "preference")
    assert len(train) == 10 and len(set(json.dumps(r) for r in train)) == 10
    assert as_set(train) <= as_set([canonical_pref(f"tr prompt {i}", f"good {i}", f"bad {i}") for i in range(20)])
    assert test.to_list() == [canonical_pref(f"te prompt {i}", f"good {i}", f"bad {i}") for i in range(6)]
    assert report.loaded == {f"{folder} [train_prefs]": 20, f"{folder} [test_prefs]": 6}


# ---------------------------------------------------------------------------------------------------------------
# 7. decontamination

BENCH_1 = "Write a short story about a robot who learns to paint with watercolors in Paris."
BENCH_2 = "What is the capital city of France?"
BENCH_2_TURN_2 = "Now describe its three most famous museums in detail please."

DECON_ROWS = {  # name -> user texts of one conversation
    "shares 8 words": ["Please write a short story about a robot who learns to paint, but set it in Tokyo."],
    "exact after normalization": ["  what is THE capital city of france!!  "],
    "second turn matches": ["Tell me about Paris.", "now describe its three most famous museums in detail, please"],
    "shares 7 words": ["Give me a short story about a robot who sings opera."],
    "unrelated": ["How do I bake sourdough bread at home?"],
}
REMOVED = {
    "ngram": {"shares 8 words", "exact after normalization", "second turn matches"},
    "exact": {"exact after normalization", "second turn matches"},
}


def decon_conversation(texts):
    messages = []
    for i, text in enumerate(texts):
        messages += [u(text), a(f"reply {i}: " + BENCH_1)]  # assistant text never counts
    return messages


def write_benchmark(tmp_path, fmt):
    if fmt == "txt":
        path = tmp_path / "bench.txt"
        path.write_text(f"{BENCH_1}\n\n  {BENCH_2}  \n{BENCH_2_TURN_2}\n", encoding="utf-8")
    else:
        path = write_jsonl(tmp_path / "mt_bench.jsonl", [
            {"question_id": 81, "category": "writing", "turns": [BENCH_1]},
            {"question_id": 82, "category": "reasoning", "turns": [BENCH_2, BENCH_2_TURN_2]},
        ])
    return path


@pytest.mark.parametrize("method", ["ngram", "exact"])
@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_decontamination_sft(tmp_path, fmt, method):
    bench = write_benchmark(tmp_path, fmt)
    rows = [{"messages": decon_conversation(texts)} for texts in DECON_ROWS.values()]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    train, _, report = prepare_file(path, "sft", decontamination_file=str(bench), decontamination_method=method)
    kept = [name for name in DECON_ROWS if name not in REMOVED[method]]
    assert as_set(train) == as_set([{"messages": decon_conversation(DECON_ROWS[name])} for name in kept])
    assert report.dropped == {"contaminated": len(REMOVED[method])}
    assert report.train_rows == len(kept)


def test_decontamination_preferences_checks_prompt_only(tmp_path):
    bench = write_benchmark(tmp_path, "jsonl")
    rows = [
        {"prompt": [u(BENCH_2.upper())], "chosen": [a("Paris")], "rejected": [a("Lyon")]},
        {"prompt": [u("Name a city.")], "chosen": [a(BENCH_1)], "rejected": [a(BENCH_2)]},
    ]
    train, _, report = prepare_file(write_jsonl(tmp_path / "prefs.jsonl", rows), "preference",
                                    decontamination_file=str(bench))
    assert train.to_list() == rows[1:]
    assert report.dropped == {"contaminated": 1}


def test_decontamination_ngram_size(tmp_path):
    bench = write_benchmark(tmp_path, "txt")
    rows = [{"messages": decon_conversation(DECON_ROWS[name])} for name in ("shares 7 words", "unrelated")]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    train, _, report = prepare_file(path, "sft", decontamination_file=str(bench), decontamination_ngram=7)
    assert train.to_list() == rows[1:] and report.dropped == {"contaminated": 1}
    train, _, report = prepare_file(path, "sft", decontamination_file=str(bench))  # n = 8
    assert len(train) == 2 and report.dropped == {"contaminated": 0}
    only_bad = write_jsonl(tmp_path / "bad.jsonl", rows[:1])
    with pytest.raises(DataError, match=r"no training rows left after filtering \(dropped: \{'contaminated': 1\}\)"):
        prepare_file(only_bad, "sft", decontamination_file=str(bench), decontamination_ngram=7)


def test_decontamination_file_errors(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", sft_rows(2))
    with pytest.raises(DataError, match="decontamination: decontamination_file not found"):
        prepare_file(path, "sft", decontamination_file=str(tmp_path / "missing.txt"))
    bad = write_jsonl(tmp_path / "bench.jsonl", [{"turns": ["x"]}, {"text": "y"}])
    with pytest.raises(DataError, match="row 1 has none of prompt, instruction, question, turns"):
        prepare_file(path, "sft", decontamination_file=str(bad))
    with pytest.raises(DataError, match="decontamination_method: expected ngram or exact"):
        prepare_file(path, "sft", decontamination_file=str(write_benchmark(tmp_path, "txt")),
                     decontamination_method="fuzzy")


# ---------------------------------------------------------------------------------------------------------------
# 8. property tests against an independent oracle

ROLES = ["system", "user", "assistant", "tool", "bot", "", "User"]
BLANK = " \n\t"
texts = st.text(alphabet="ab" + BLANK, max_size=4)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts}), max_size=6)


def has_text(content):
    return any(c not in BLANK for c in content)


def oracle_conversation_ok(msgs, must_end_with):
    if not msgs or not all(m["role"] in ("system", "user", "assistant") and has_text(m["content"]) for m in msgs):
        return False
    roles = [m["role"] for m in msgs]
    if roles[0] == "system":
        roles = roles[1:]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2):
        return False
    return must_end_with is None or roles[-1] == must_end_with


def oracle_preference_ok(row):
    return (
        oracle_conversation_ok(row["prompt"], "user")
        and all(len(row[k]) == 1 and row[k][0]["role"] == "assistant" and has_text(row[k][0]["content"])
                for k in ("chosen", "rejected"))
        and row["chosen"][0]["content"].strip(BLANK) != row["rejected"][0]["content"].strip(BLANK)
    )


# Random role lists rarely make a valid preference row: build a valid one, then maybe break it in one place.
words = st.sampled_from(["a", "b", "ab", "b a", " a\n"])
MUTATIONS = ["none"] * 6 + ["blank", "extra answer", "no answer", "answer role", "same answers", "prompt ends",
                            "system late", "bad role"]


@st.composite
def near_conversations(draw):
    """A valid conversation (optional system, alternating from user), then maybe one thing broken."""
    msgs = ([s("sys")] if draw(st.booleans()) else []) + [
        (u if i % 2 == 0 else a)(x) for i, x in enumerate(draw(st.lists(words, min_size=1, max_size=5)))
    ]
    i = draw(st.integers(0, len(msgs) - 1))
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "blank":
        msgs[i] = {**msgs[i], "content": draw(st.sampled_from(["", " ", "\n\t"]))}
    elif mutation in ("bad role", "answer role"):
        msgs[i] = {**msgs[i], "role": draw(st.sampled_from(["bot", "", "User", "system", "user", "assistant"]))}
    elif mutation in ("extra answer", "prompt ends"):
        msgs.insert(i, draw(st.sampled_from([a("x"), u("x")])))
    elif mutation == "system late":
        msgs.insert(draw(st.integers(1, len(msgs))), s("late"))
    elif mutation == "no answer":
        del msgs[i]
    return msgs


@settings(max_examples=400, deadline=None)
@given(msgs=st.one_of(messages, near_conversations()), must_end_with=st.sampled_from([None, "user", "assistant"]))
def test_conversation_problem_matches_oracle(msgs, must_end_with):
    problem = conversation_problem(msgs, must_end_with)
    assert (problem is None) == oracle_conversation_ok(msgs, must_end_with), problem
    assert problem is None or isinstance(problem, str) and problem
    assert (sft_problem({"messages": msgs}) is None) == oracle_conversation_ok(msgs, "assistant")


@st.composite
def near_preference_rows(draw):
    turns = draw(st.lists(words, min_size=1, max_size=5).filter(lambda x: len(x) % 2 == 1))
    prompt = ([s("sys")] if draw(st.booleans()) else []) + [(u if i % 2 == 0 else a)(x) for i, x in enumerate(turns)]
    row = {"prompt": prompt, "chosen": [a(draw(words))], "rejected": [a(draw(words))]}
    side = draw(st.sampled_from(["prompt", "chosen", "rejected"]))
    i = draw(st.integers(0, len(row[side]) - 1))
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "blank":
        row[side][i] = {**row[side][i], "content": draw(st.sampled_from(["", " ", "\n\t"]))}
    elif mutation == "extra answer":
        row["chosen"].append(draw(st.sampled_from([a("x"), u("x")])))
    elif mutation == "no answer":
        row["rejected"] = []
    elif mutation == "answer role":
        row["chosen"] = [{**row["chosen"][0], "role": draw(st.sampled_from(["user", "system", "tool"]))}]
    elif mutation == "same answers":
        row["rejected"] = [a(row["chosen"][0]["content"] + " ")]
    elif mutation == "prompt ends":
        row["prompt"].append(a("x"))
    elif mutation == "system late":
        row["prompt"].insert(draw(st.integers(1, len(row["prompt"]))), s("late"))
    elif mutation == "bad role":
        row[side][i] = {**row[side][i], "role": draw(st.sampled_from(["bot", "", "User"]))}
    return row["prompt"], row["chosen"], row["rejected"]


@settings(max_examples=400, deadline=None)
@given(data=st.one_of(
    st.tuples(messages, messages, messages),
    near_preference_rows(),
))
def test_preference_problem_matches_oracle(data):
    prompt, chosen, rejected = data
    row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    assert (preference_problem(row) is None) == oracle_preference_ok(row)


JUNK = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3), st.booleans())
any_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts}),
    st.fixed_dictionaries({"role": st.one_of(st.sampled_from(ROLES), JUNK), "content": st.one_of(texts, JUNK)}),
    st.fixed_dictionaries({"role": st.sampled_from(ROLES)}),
    st.fixed_dictionaries({"content": texts}),
    JUNK,
    st.lists(JUNK, max_size=2),
)
any_value = st.one_of(st.lists(any_message, max_size=5), texts, JUNK)
SCHEMAS = ["messages", "chosen_as_sft", "alpaca", "prompt_completion", "explicit_prompt", "implicit_prompt"]


@settings(max_examples=600, deadline=None)
@given(schema=st.sampled_from(SCHEMAS), values=st.fixed_dictionaries({
    k: any_value for k in ("messages", "chosen", "rejected", "prompt", "completion", "instruction", "input", "output")
}))
def test_convert_row_raises_only_row_error(schema, values):
    try:
        out = convert_row(values, schema)
    except RowError as err:
        assert str(err)
        return
    # What comes out is canonical: lists of {role: str, content: str}, so the validators cannot crash on it.
    keys = ("messages",) if "messages" in out else ("prompt", "chosen", "rejected")
    assert set(out) == set(keys)
    for key in keys:
        assert all(set(m) == {"role", "content"} and isinstance(m["role"], str) and isinstance(m["content"], str)
                   for m in out[key])
    problem = sft_problem(out) if "messages" in out else preference_problem(out)
    assert problem is None or isinstance(problem, str)


@settings(max_examples=400, deadline=None)
@given(msgs=st.one_of(messages, near_conversations()))
def test_convert_then_validate_sft_matches_oracle(msgs):
    out = convert_row({"messages": msgs}, "messages")
    assert out == {"messages": msgs}
    assert (sft_problem(out) is None) == oracle_conversation_ok(msgs, "assistant")


@settings(max_examples=400, deadline=None)
@given(prompt=st.one_of(messages, near_conversations()), chosen_role=st.sampled_from(ROLES), good=texts,
       bad=texts)
def test_convert_then_validate_preference_matches_oracle(prompt, chosen_role, good, bad):
    """Implicit-prompt rows built from one prompt: conversion splits off the last message of each side."""
    row = {"chosen": prompt + [{"role": chosen_role, "content": good}], "rejected": prompt + [a(bad)]}
    if not prompt:  # one message per side: no prompt to split off
        with pytest.raises(RowError, match="must be conversations ending with an assistant message"):
            convert_row(row, "implicit_prompt")
        return
    out = convert_row(row, "implicit_prompt")
    assert out == {"prompt": prompt, "chosen": [{"role": chosen_role, "content": good}], "rejected": [a(bad)]}
    assert (preference_problem(out) is None) == oracle_preference_ok(out)


@settings(max_examples=300, deadline=None)
@given(instruction=texts, extra=st.one_of(st.none(), texts), output=texts)
def test_alpaca_conversion_matches_oracle(instruction, extra, output):
    row = {"instruction": instruction, "input": extra, "output": output}
    if not has_text(instruction):  # an empty instruction is a bad row, whatever the input says
        with pytest.raises(RowError, match="empty 'instruction'"):
            convert_row(row, "alpaca")
        return
    out = convert_row(row, "alpaca")
    user = f"{instruction}\n\n{extra}" if extra and has_text(extra) else instruction
    assert out == {"messages": [u(user), a(output)]}
    assert (sft_problem(out) is None) == has_text(output)


# ---------------------------------------------------------------------------------------------------------------
# 8. split names on local data (the handbook's dataset_splits) and held-out rows: never evaluate on training rows


def test_single_file_cannot_give_a_second_split(tmp_path):
    # The handbook's dataset_mixer + dataset_splits [train_prefs, test_prefs] pointed at one file: before, both
    # splits read the whole file, and the eval rows were the training rows.
    rows = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(10))
    values = translate_legacy_keys({"dataset_mixer": {str(rows): 1.0}, "dataset_splits": ["train_prefs", "test_prefs"]},
                                   stage="dpo", source="x")
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_mixture=values["dataset_mixture"]), "preference")
    assert str(err.value).startswith(
        f"dataset_mixture.datasets[1]: {rows} is a single file, which has one split: split 'test_prefs' would read "
        "the same rows as split 'train_prefs' (dataset_mixture.datasets[0]). Use a folder in hub layout "
        "(data/train_prefs-*.parquet, data/test_prefs-*.parquet)")
    # the same for two training splits (the handbook's newer mixture trains on train_sft and test_sft)
    with pytest.raises(DataError, match=r"datasets\[1\]: .* is a single file, which has one split"):
        prepare_datasets(mixture({"id": str(rows), "split": "train_prefs"}, {"id": str(rows), "split": "test_prefs"}),
                         "preference")


def test_eval_source_that_reads_the_training_rows_is_refused(tmp_path):
    rows = write_jsonl(tmp_path / "chat.jsonl", sft_rows(10))
    folder = write_hub_layout(tmp_path / "hub", {"train_sft": sft_rows(10), "test_sft": sft_rows(3, "t")})
    with pytest.raises(DataError, match=r"^dataset_mixture.datasets\[1\]: split 'train' of .*chat.jsonl is also "
                                        r"read for train \(dataset_mixture.datasets\[0\]\): the eval rows would be"):
        prepare_datasets(mixture({"id": str(rows)}, {"id": str(rows), "role": "test"}), "sft")
    with pytest.raises(DataError, match=r"^dataset_mixture.datasets\[1\]: split 'train_sft' of .* is also read"):
        prepare_datasets(mixture({"id": str(folder), "split": "train_sft"},
                                 {"id": str(folder), "split": "train_sft", "role": "test"}), "sft")
    with pytest.raises(DataError, match=r"^dataset_test_split: split 'train_sft' of .* is also read for train "
                                        r"\(dataset_train_split\)"):
        prepare_file(folder, "sft", dataset_train_split="train_sft", dataset_test_split="train_sft")


def test_named_splits_of_a_hub_layout_folder_are_distinct(tmp_path):
    folder = write_hub_layout(tmp_path / "hub", {"train_sft": sft_rows(10, "tr"), "test_sft": sft_rows(3, "te")})
    train, test, _ = prepare_datasets(mixture({"id": str(folder), "split": "train_sft"},
                                              {"id": str(folder), "split": "test_sft", "role": "test"}), "sft")
    assert as_set(train) == as_set(sft_rows(10, "tr")) and test.to_list() == sft_rows(3, "te")


def test_same_rows_twice_in_one_role_is_a_weighting(tmp_path):
    rows = write_jsonl(tmp_path / "chat.jsonl", sft_rows(4))
    train, test, _ = prepare_datasets(mixture({"id": str(rows)}, {"id": str(rows)}), "sft")
    assert len(train) == 8 and test is None


def test_single_file_dataset_name_has_no_eval_split(tmp_path, caplog):
    rows = write_jsonl(tmp_path / "prefs.jsonl", pref_rows(6))
    caplog.set_level(logging.INFO, logger="zephyr.data.loading")
    train, test, _ = prepare_file(rows, "preference", dataset_train_split="train_prefs",
                                  dataset_test_split="test_prefs")
    assert len(train) == 6 and test is None
    assert any("is a single file" in r.getMessage() and "'test_prefs'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("rows, size, held", [(1, 0.1, 1), (1, 1, 1), (5, 5, 5), (5, 8, 8), (4, 0.9, 4)])
def test_test_split_size_that_leaves_no_training_row(tmp_path, rows, size, held):
    data = write_jsonl(tmp_path / "chat.jsonl", sft_rows(rows))
    with pytest.raises(DataError) as err:
        prepare_datasets(mixture({"id": str(data)}, test_split_size=size), "sft")
    plural = "row" if rows == 1 else "rows"
    assert str(err.value).startswith(f"dataset_mixture.test_split_size: {size:g} holds out {held} of the {rows} "
                                     f"training {plural}, leaving none to train on")


@pytest.mark.parametrize("size", [1.5, -0.2])
def test_test_split_size_is_a_fraction_or_a_count(tmp_path, size):
    data = write_jsonl(tmp_path / "chat.jsonl", sft_rows(10))
    with pytest.raises(DataError, match=rf"^dataset_mixture.test_split_size: expected a fraction in \(0, 1\) or a "
                                        rf"whole number of rows >= 1, got {size:g}$"):
        prepare_datasets(mixture({"id": str(data)}, test_split_size=size), "sft")
    train, test, _ = prepare_datasets(mixture({"id": str(data)}, test_split_size=0), "sft")  # 0: no hold-out
    assert len(train) == 10 and test is None
