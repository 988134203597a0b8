"""Hostile input (docs/hostile-input.md): every broken input a user may bring is a clear error naming the place
(file, line/row, key) and what was expected, or a documented drop with a count. Cases already covered elsewhere
(tests/test_recipe.py, tests/test_data.py) are only pointed to from the table, not repeated here.

Three cases go through the real `zephyr` command in a subprocess (exit code 2, one `zephyr: error:` line, no
traceback); the rest call load_recipe / prepare_datasets / load_tokenizer directly."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zephyr import preflight
from zephyr.chat_template import ZEPHYR_CHAT_TEMPLATE
from zephyr.cli import main as cli_main
from zephyr.configs import DataArguments, DatasetSource, ModelArguments, ZephyrSFTConfig
from zephyr.data import prepare_datasets
from zephyr.data.loading import DataError, check_utf8, first_json_problem
from zephyr.data.pipeline import DataReport, canonical_rows
from zephyr.modeling import load_model, load_tokenizer
from zephyr.recipe import RecipeError, parse_stage_args, read_yaml

REPO = Path(__file__).resolve().parents[1]
SFT = (ModelArguments, DataArguments, ZephyrSFTConfig)


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict:
    return {"role": "system", "content": text}


GOOD = [{"messages": [u(f"question {i}"), a(f"answer {i}")]} for i in range(5)]


def jsonl_lines(rows: list[dict]) -> list[str]:
    return [json.dumps(r) for r in rows]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def zephyr_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `zephyr` command as a user runs it (conftest.py's offline settings are inherited)."""
    return subprocess.run([sys.executable, "-m", "zephyr.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def assert_one_clear_error(result: subprocess.CompletedProcess) -> str:
    """Exit code 2 and the error as one `zephyr: error:` line on stderr; no traceback anywhere."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("zephyr: error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def sft_recipe(tmp_path: Path, model: str, data: Path) -> Path:
    path = tmp_path / "sft.yaml"
    path.write_text(f"model_name_or_path: {model}\ndataset_name: {data}\noutput_dir: {tmp_path / 'out'}\n"
                    "max_steps: 1\nmax_length: 64\nreport_to: none\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# 1. malformed YAML (syntax errors: tests/test_recipe.py::test_yaml_syntax_error_names_file_and_line)


def test_cli_malformed_yaml_is_one_line_naming_file_and_line(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("model_name_or_path: m\nlearning_rate: 2e-5\ndataset_name: a: b\n", encoding="utf-8")
    line = assert_one_clear_error(zephyr_cli("sft", str(recipe), cwd=tmp_path))
    assert line.startswith(f"zephyr: error: {recipe}:3:")
    assert "YAML syntax error: mapping values are not allowed here" in line


def test_yaml_key_given_twice_names_both_lines(tmp_path):
    # PyYAML alone keeps the last value silently: the recipe would train with whichever came last.
    path = tmp_path / "twice.yaml"
    path.write_text("learning_rate: 1e-5\nseed: 1\nlearning_rate: 2e-5\n", encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        read_yaml(path)
    assert str(err.value) == (f"{path}:3:1: YAML syntax error: key 'learning_rate' appears twice (first on line 1): "
                              "keep one")
    merged = tmp_path / "merge.yaml"  # overriding a merged (`<<: *base`) key is not a repeat
    merged.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n", encoding="utf-8")
    assert read_yaml(merged)["other"] == {"x": 3, "y": 2}


# ---------------------------------------------------------------------------------------------------------------
# 2-3. wrong value types and unknown keys (recipe keys: tests/test_recipe.py) inside dataset_mixture


@pytest.mark.parametrize("mixture, expected", [
    ({"datasets": ["org/chats"]},
     "dataset_mixture.datasets[0]: expected a mapping such as {id: org/name, split: train}, got 'org/chats'"),
    ({"datasets": [{"id": "x", "weight": "half"}]},
     "dataset_mixture.datasets[0]: key 'weight': expected a number, got 'half'"),
    ({"datasets": [{"id": "x", "splt": "train"}]},
     "dataset_mixture.datasets[0]: unknown key 'splt'; did you mean 'split'?"),
    ({"datasets": [{"split": "train"}]}, "dataset_mixture.datasets[0]: missing key 'id' (a hub id, local file or folder)"),
    ({"datasets": [{"id": "x"}], "seed": "abc"}, "key 'dataset_mixture.seed': expected an integer, got 'abc'"),
    ({"datasets": [{"id": "x"}], "test_split_size": "big"},
     "key 'dataset_mixture.test_split_size': expected a number, got 'big'"),
])
def test_mixture_entry_types_and_keys(mixture, expected):
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_mixture=mixture), "sft")
    assert str(err.value) == expected


def test_wrong_value_type_in_a_row_names_row_and_field(tmp_path):
    # datasets stores a column of mixed types as JSON, so the row reaches validation and is named there.
    rows = GOOD[:2] + [{"messages": [u("q"), {"role": "assistant", "content": 42}]}] + GOOD[2:]
    path = write_lines(tmp_path / "types.jsonl", jsonl_lines(rows))
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path)), "sft")
    assert str(err.value).startswith(f"{path} [train]: row 2: 'messages[1].content' must be a string, got int.")
    _, _, report = prepare_datasets(DataArguments(dataset_name=str(path), invalid_rows="drop"), "sft")
    assert report.dropped == {"invalid": 1} and report.train_rows == 5


# ---------------------------------------------------------------------------------------------------------------
# 4. missing files (recipe: tests/test_recipe.py::test_missing_recipe_file; data file:
#    tests/test_data.py::test_missing_file_names_it; decontamination file: test_decontamination_file_errors)


def test_cli_missing_model_folder_names_key_and_path(tmp_path):
    data = write_lines(tmp_path / "rows.jsonl", jsonl_lines(GOOD))
    missing = tmp_path / "no-such-model"
    recipe = sft_recipe(tmp_path, str(missing), data)
    line = assert_one_clear_error(zephyr_cli("dpo", str(recipe), cwd=tmp_path))
    assert line == (f"zephyr: error: model_name_or_path: {missing}: no such folder (expected a model folder with "
                    "config.json and the tokenizer files, or a hub id such as mistralai/Mistral-7B-v0.1)")


def test_model_folder_without_tokenizer_or_weights(tmp_path, tiny_dir):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(RecipeError, match=rf"^model_name_or_path: cannot load a tokenizer from '{re.escape(str(empty))}': "):
        load_tokenizer(ModelArguments(model_name_or_path=str(empty)))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_dir / "model" / "config.json", no_weights)
    args = ModelArguments(model_name_or_path=str(tiny_dir / "model"), ref_model_name_or_path=str(no_weights))
    with pytest.raises(RecipeError, match=rf"^ref_model_name_or_path: cannot load a model from '{re.escape(str(no_weights))}'"):
        load_model(args, args.ref_model_name_or_path)


# ---------------------------------------------------------------------------------------------------------------
# 5. corrupted lines in JSON Lines / JSON / CSV, and empty files


def test_cli_corrupted_jsonl_line_names_file_and_line(tmp_path, tiny_dir):
    lines = jsonl_lines(GOOD)
    lines[2] = '{"messages": [{"role": "user", "content": "x"}'  # cut short, as by a crashed writer
    data = write_lines(tmp_path / "chat.jsonl", lines)
    line = assert_one_clear_error(zephyr_cli("sft", str(sft_recipe(tmp_path, str(tiny_dir / "model"), data)),
                                             cwd=tmp_path))
    assert line == (f"zephyr: error: {data}: line 3, column 47: not valid JSON (Expecting ',' delimiter); "
                    "expected one JSON object per line")


@pytest.mark.parametrize("name, content, expected", [
    ("rows.jsonl", "\n".join(jsonl_lines(GOOD[:3])) + "\nnot json\n",
     "line 4, column 1: not valid JSON (Expecting value); expected one JSON object per line"),
    ("rows.jsonl", "\n".join(jsonl_lines(GOOD[:2])) + "\n[1, 2]\n", "line 3: expected a JSON object {...} per line, got list"),
    ("rows.json", '[{"prompt": "hi", "completion": "x"},\n {"prompt": }]', "line 2, column 13: not valid JSON (Expecting value)"),
    ("rows.json", "\n".join(jsonl_lines(GOOD[:2])) + '\n{"messages": [}\n',  # JSON Lines in a .json file
     "line 3, column 15: not valid JSON (Expecting value); expected one JSON object per line"),
    ("rows.csv", "prompt,completion\nhi,there\nsay,a,b\n",
     "could not load: ParserError: Error tokenizing data. C error: Expected 2 fields in line 3, saw 3\n"),
    ("rows.jsonl", "", "the file is empty (expected one row per line, or a table)"),
    ("rows.jsonl", "\n \n", "the file has no rows"),
])
def test_broken_data_file_names_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path)), "sft")
    assert str(err.value) == f"{path}: {expected}"


def test_corrupt_parquet_names_file(tmp_path):
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: could not load: ArrowInvalid: .*magic bytes"):
        prepare_datasets(DataArguments(dataset_name=str(path)), "sft")


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.one_of(st.sampled_from(jsonl_lines(GOOD)), st.text(max_size=12)), min_size=1, max_size=6))
def test_first_json_problem_fuzz(tmp_path_factory, lines):
    """None exactly when every non-blank line is a JSON object; else it names the first line that is not."""
    path = tmp_path_factory.mktemp("fuzz") / "rows.jsonl"
    text = "\n".join(line.replace("\n", " ") for line in lines)
    path.write_text(text, encoding="utf-8")
    problem = first_json_problem(path)
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    bad = []
    for n, line in numbered:
        try:
            ok = isinstance(json.loads(line), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            bad.append(n)
    if not numbered:
        assert problem == "the file has no rows (only blank lines)"
    elif not bad:
        assert problem is None
    else:
        assert problem.startswith(f"line {bad[0]}")


# ---------------------------------------------------------------------------------------------------------------
# 6. wrong dataset schema: tests/test_data.py::test_unknown_schema_lists_columns, ::test_raw_ultrafeedback_asks_to_binarize
# 7. empty dataset after filtering (all rows invalid: tests/test_data.py::test_all_rows_invalid_is_an_error)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return load_tokenizer(ModelArguments(model_name_or_path=str(tiny_dir / "model")))


LONG = " ".join(["apple river stone cloud"] * 40)


def test_every_train_row_too_long_is_an_error_with_the_counts(tmp_path, tokenizer):
    path = write_lines(tmp_path / "long.jsonl", jsonl_lines([{"messages": [u(f"q{i}"), a(LONG)]} for i in range(3)]))
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path), long_rows="drop"), "sft", tokenizer, 48)
    assert str(err.value).startswith("no training rows left after filtering (dropped: {'too long': 3}): expected at "
                                     "least one; check max_length, long_rows")


def test_every_eval_row_too_long_is_an_error_not_an_empty_eval_set(tmp_path, tokenizer):
    train = write_lines(tmp_path / "train.jsonl", jsonl_lines(GOOD))
    held = write_lines(tmp_path / "eval.jsonl", jsonl_lines([{"messages": [u("q"), a(LONG)]}] * 2))
    args = DataArguments(dataset_mixture={"datasets": [{"id": str(train)}, {"id": str(held), "role": "test"}]},
                         long_rows="drop")
    with pytest.raises(DataError, match=r"^no eval rows left after filtering \(dropped: \{'too long': 2\}\)"):
        prepare_datasets(args, "sft", tokenizer, 48)


def test_data_without_rows(tmp_path):
    (tmp_path / "header.csv").write_text("prompt,completion\n", encoding="utf-8")
    (tmp_path / "rows.json").write_text("[]", encoding="utf-8")
    empty = datasets.Dataset.from_dict({"prompt": [], "completion": []}, features=datasets.Features(
        {"prompt": datasets.Value("string"), "completion": datasets.Value("string")}))
    empty.to_parquet(str(tmp_path / "rows.parquet"))
    for name in ("header.csv", "rows.json", "rows.parquet"):
        with pytest.raises(DataError) as err:
            prepare_datasets(DataArguments(dataset_name=str(tmp_path / name)), "sft")
        assert str(err.value) == f"{tmp_path / name}: the file has no rows"
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    empty.to_parquet(str(hub / "data" / "train_sft-00000-of-00001.parquet"))
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(hub), dataset_train_split="train_sft"), "sft")
    assert str(err.value) == f"{hub} (split train_sft): the split has no rows"
    with pytest.raises(DataError, match=r"^in memory \[train\]: the dataset has no rows$"):  # any other way in
        canonical_rows(empty, DatasetSource(id="in memory"), "sft", "error", DataReport())


# ---------------------------------------------------------------------------------------------------------------
# 8. a tokenizer without a chat template: zephyr installs its Zephyr template on purpose and says so


def tokenizer_copy(tiny_dir: Path, folder: Path, drop: tuple[str, ...] = ()) -> Path:
    """The tiny model's tokenizer without its chat template (and without the `drop` entries of its config)."""
    shutil.copytree(tiny_dir / "model", folder, ignore=shutil.ignore_patterns("chat_template.jinja", "*.safetensors"))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in ("chat_template", *drop):
        config.pop(key, None)
    config_path.write_text(json.dumps(config))
    return folder


def test_tokenizer_without_chat_template_gets_zephyrs_and_says_so(tmp_path, tiny_dir, caplog):
    folder = tokenizer_copy(tiny_dir, tmp_path / "base")
    with caplog.at_level(logging.INFO, logger="zephyr.modeling"):
        tok = load_tokenizer(ModelArguments(model_name_or_path=str(folder)))
    assert tok.chat_template == ZEPHYR_CHAT_TEMPLATE
    assert f"{folder} has no chat template: using zephyr's (the Zephyr-7B format" in caplog.text
    assert "set chat_template in the recipe to use another" in caplog.text
    own = load_tokenizer(ModelArguments(model_name_or_path=str(folder), chat_template="{{ messages[0]['content'] }}"))
    assert own.chat_template == "{{ messages[0]['content'] }}"


def test_unusable_chat_template_is_an_error_at_load(tmp_path, tiny_dir):
    # Zephyr's template ends every turn with eos_token: a tokenizer without one cannot use it.
    folder = tokenizer_copy(tiny_dir, tmp_path / "no-eos", drop=("eos_token",))
    with pytest.raises(RecipeError, match=r"^model_name_or_path: the chat template cannot render a user/assistant "
                                          r"conversation: UndefinedError: 'eos_token' is undefined$"):
        load_tokenizer(ModelArguments(model_name_or_path=str(folder)))
    with pytest.raises(RecipeError, match=r"^chat_template: the chat template cannot render .*TemplateSyntaxError"):
        load_tokenizer(ModelArguments(model_name_or_path=str(tiny_dir / "model"), chat_template="{{ messages[0] "))


# ---------------------------------------------------------------------------------------------------------------
# 9. non-alternating roles (user, user, assistant: tests/test_data.py INVALID_CASES "roles not alternating")

NON_ALTERNATING = {  # name -> (kind, bad row, reason)
    "assistant first": ("sft", {"messages": [a("hello"), u("hi"), a("bye")]},
                        "message 0: roles must alternate user/assistant; expected user, got assistant"),
    "two assistants": ("sft", {"messages": [u("hi"), a("one"), a("two")]},
                       "message 2: roles must alternate user/assistant; expected user, got assistant"),
    "late system": ("sft", {"messages": [u("hi"), s("sys"), a("yo")]},
                    "message 1: roles must alternate user/assistant; expected assistant, got system"),
    "preference prompt user, user": ("preference", {"prompt": [u("a"), u("b")], "chosen": [a("x")], "rejected": [a("y")]},
                                     "prompt: message 1: roles must alternate user/assistant; expected assistant, got user"),
}


@pytest.mark.parametrize("case", sorted(NON_ALTERNATING))
def test_non_alternating_roles_error_names_row_or_drop_counts(tmp_path, case, caplog):
    kind, bad, reason = NON_ALTERNATING[case]
    good = GOOD if kind == "sft" else [{"prompt": [u(f"q{i}")], "chosen": [a("yes")], "rejected": [a("no")]}
                                       for i in range(5)]
    path = write_lines(tmp_path / "rows.jsonl", jsonl_lines(good[:3] + [bad] + good[3:] + [bad]))
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path)), kind)
    assert str(err.value) == (f"{path} [train]: row 3: {reason}. Fix the data, or set invalid_rows: drop to skip "
                              "such rows")
    with caplog.at_level(logging.WARNING, logger="zephyr.data.pipeline"):
        train, _, report = prepare_datasets(DataArguments(dataset_name=str(path), invalid_rows="drop"), kind)
    assert report.dropped == {"invalid": 2} and len(train) == report.train_rows == 5
    assert f"{path} [train]: dropped 2 invalid rows of 7 (invalid_rows: drop). Examples: row 3: {reason}; row 6:" \
        in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# 10. rows longer than max_length: tests/test_data.py::test_long_rows_error_names_row_and_token_count,
#     ::test_long_rows_drop_and_truncate, ::test_long_preference_rows, ::test_long_rows_in_eval_set
# 11. non-UTF-8 bytes


def latin1(text: str) -> bytes:
    return text.encode("latin-1")


@pytest.mark.parametrize("name, content, line", [
    ("rows.jsonl", latin1('{"prompt": "hi", "completion": "x"}\n{"prompt": "café", "completion": "x"}\n'), 2),
    ("rows.json", latin1('[{"prompt": "hi",\n  "completion": "naïve"}]'), 2),
    ("rows.csv", latin1("prompt,completion\nhi,there\nsay,déjà vu\n"), 3),
])
def test_non_utf8_data_file_names_file_line_and_byte(tmp_path, name, content, line):
    path = tmp_path / name
    path.write_bytes(content)
    byte = next(i for i, b in enumerate(content) if b >= 0x80)  # the Latin-1 é/ï: not UTF-8
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path)), "sft")
    assert str(err.value) == (f"{path}: line {line} (byte {byte}): not valid UTF-8 (invalid continuation byte); "
                              "expected UTF-8 text: re-save the file as UTF-8")


def test_non_utf8_recipe_names_file_line_and_byte(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(latin1("seed: 1\n# réglages\nlearning_rate: 2e-5\n"))
    with pytest.raises(RecipeError) as err:
        read_yaml(path)
    assert str(err.value) == f"{path}:2: not valid UTF-8 text (invalid continuation byte at byte 11): save the file as UTF-8"


def test_non_utf8_string_inside_parquet_names_row(tmp_path):
    # pyarrow does not check that string columns hold UTF-8; such a row fails where it is read.
    completion = pa.array([b"fine", b"also fine", b"caf\xe9"], pa.binary()).view(pa.string())
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "completion": completion}), path)
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path)), "sft")
    assert str(err.value) == (f"{path} [train]: row 2: text is not valid UTF-8 (unexpected end of data); "
                              "expected UTF-8 strings")


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.one_of(st.text(max_size=4).map(str.encode), st.binary(max_size=2)), max_size=8).map(b"".join),
       chunk_size=st.sampled_from([1, 2, 3, 5, 1 << 20]))
def test_check_utf8_agrees_with_decode_at_any_chunk_size(tmp_path_factory, data, chunk_size):
    """Characters split across read chunks are fine; the first bad byte and its line are exact."""
    path = tmp_path_factory.mktemp("utf8") / "rows.jsonl"
    path.write_bytes(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        with pytest.raises(DataError) as info:
            check_utf8(path, chunk_size)
        line = data.count(b"\n", 0, err.start) + 1
        assert f"line {line} (byte {err.start}): " in str(info.value)
    else:
        check_utf8(path, chunk_size)


# ---------------------------------------------------------------------------------------------------------------
# 12. routine mistakes, second round (issue 14): each is one line from the `zephyr` command, exit code 2, and
#     nothing written to output_dir. Run in this process (zephyr.cli.main): a subprocess costs ~9 s to start.


def cli_error(capsys, *argv: str) -> str:
    """`zephyr ARGV` in this process: exit code 2 and exactly one `zephyr: error:` line on stderr."""
    code = cli_main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("zephyr: error: ")]
    assert len(errors) == 1, err[-2000:]
    return errors[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


def dpo_recipe(tmp_path: Path, model: str, data: Path, extra: str = "") -> Path:
    path = tmp_path / "dpo.yaml"
    path.write_text(f"model_name_or_path: {model}\ndataset_name: {data}\noutput_dir: {tmp_path / 'out'}\n"
                    f"max_steps: 1\nmax_length: 64\nreport_to: none\n{extra}", encoding="utf-8")
    return path


RANGES = [  # (stage, override, the error after "command line: ")
    ("sft", ["--learning_rate", "-1"], "key 'learning_rate': expected a number > 0 (0 would train nothing), got -1.0"),
    ("sft", ["--learning_rate", "0"], "key 'learning_rate': expected a number > 0 (0 would train nothing), got 0.0"),
    ("sft", ["--per_device_train_batch_size", "0"],
     "key 'per_device_train_batch_size': expected an integer >= 1, got 0"),
    ("dpo", ["--per_device_eval_batch_size", "0"], "key 'per_device_eval_batch_size': expected an integer >= 1, got 0"),
    ("sft", ["--gradient_accumulation_steps", "0"],
     "key 'gradient_accumulation_steps': expected an integer >= 1, got 0"),
    ("dpo", ["--beta", "-0.1"], "key 'beta': expected a number > 0 (the strength of the pull towards the reference; "
                                "Zephyr: 0.01 to 0.1), got -0.1"),
    ("sft", ["--max_length", "0"], "key 'max_length': expected a number of tokens >= 1, or null for no limit, got 0"),
    ("dpo", ["--ref_token_budget", "-5"],
     "key 'ref_token_budget': expected a number of tokens >= 1, or null for the training batch size, got -5"),
    ("sft", ["--num_train_epochs", "-1"], "key 'num_train_epochs': expected a number > 0, got -1.0"),
    ("sft", ["--warmup_steps", "-0.1"],
     "key 'warmup_steps': expected a number >= 0 (below 1: a fraction of the training steps), got -0.1"),
    ("sft", ["--max_steps", "-2"], "key 'max_steps': expected a number of steps >= 1, or -1 to train num_train_epochs, "
                                   "got -2"),
    ("sft", ["--lora_dropout", "1"], "key 'lora_dropout': expected a number in [0, 1), got 1.0"),
    ("sft", ["--max_train_samples", "0"], "key 'max_train_samples': expected an integer >= 1, or null for every row, "
                                          "got 0"),
    ("dpo", ["--loss_type", "bogus"], "key 'loss_type': expected one or more of sigmoid, hinge, ipo, exo_pair, "
     "nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm (TRL "
     "1.16 DPO loss types), got ['bogus']"),
    ("dpo", ["--loss_type", "[sigmoid, sft]", "--loss_weights", "[1.0]"],
     "key 'loss_weights': expected 2 weight(s), one per loss_type ['sigmoid', 'sft'], got [1.0]"),
    ("sft", ["--loss_type", "bogus"],
     "key 'loss_type': expected one of nll, dft (TRL 1.16 SFT loss types), got 'bogus'"),
    ("sft", ["--dtype", "float64"], "key 'dtype': expected one of auto, float32, bfloat16, float16, got 'float64'"),
    ("sft", ["--attn_implementation", "flash"], "key 'attn_implementation': expected null or one of eager, sdpa, "
     "flex_attention, flash_attention_2, flash_attention_3, flash_attention_4, paged|eager, or a hub kernel such as "
     "kernels-community/flash-attn2, got 'flash'"),
    ("sft", ["--dataset_train_split", ""], "key 'dataset_train_split': expected a split name such as train or "
                                           "train_sft, got ''"),
]


@pytest.mark.parametrize("stage, override, expected", RANGES, ids=[" ".join(r[1]) for r in RANGES])
def test_out_of_range_value_is_one_line_and_writes_nothing(tmp_path, capsys, stage, override, expected):
    data = write_lines(tmp_path / "rows.jsonl", jsonl_lines(GOOD))
    recipe = (sft_recipe if stage == "sft" else dpo_recipe)(tmp_path, str(tmp_path / "model"), data)
    assert cli_error(capsys, stage, str(recipe), *override) == f"zephyr: error: command line: {expected}"
    assert_nothing_written(tmp_path / "out")
    # --dry-run reads the recipe the same way, so it catches the same mistake
    assert cli_error(capsys, stage, str(recipe), *override, "--dry-run") == f"zephyr: error: command line: {expected}"


def test_out_of_range_value_in_the_file_names_the_file(tmp_path):
    recipe = sft_recipe(tmp_path, "org/model", tmp_path / "rows.jsonl")
    recipe.write_text(recipe.read_text() + "learning_rate: -2e-5\n", encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        parse_stage_args([str(recipe)], SFT, "sft")
    assert str(err.value) == f"{recipe}: key 'learning_rate': expected a number > 0 (0 would train nothing), got -2e-05"


@pytest.mark.parametrize("given, meant", [("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"),
                                          ("null", "auto"), ("float32", "float32")])
def test_dtype_aliases_are_read_and_logged(tmp_path, caplog, given, meant):
    caplog.set_level(logging.WARNING, logger="zephyr.rules")
    recipe = sft_recipe(tmp_path, "org/model", tmp_path / "rows.jsonl")
    model, _, _ = parse_stage_args([str(recipe), "--dtype", given], SFT, "sft")
    assert model.dtype == meant
    said = [r.getMessage() for r in caplog.records if r.name == "zephyr.rules"]
    assert said == ([] if given == meant else [f"command line: dtype: {given if given == 'null' else repr(given)} read "
                                               f"as {meant!r}"])


def test_flash_attention_without_flash_attn_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "package_installed", lambda module: False)  # as on a machine without flash-attn
    recipe = sft_recipe(tmp_path, str(tmp_path / "model"), write_lines(tmp_path / "rows.jsonl", jsonl_lines(GOOD)))
    line = cli_error(capsys, "sft", str(recipe), "--attn_implementation", "flash_attention_2")
    assert line == ("zephyr: error: key 'attn_implementation': flash_attention_2 needs the flash_attn package, which "
                    "is not installed: set attn_implementation: sdpa, or pip install flash-attn")
    assert_nothing_written(tmp_path / "out")
    monkeypatch.setattr(preflight, "package_installed", lambda module: True)  # installed, but no GPU here
    monkeypatch.setattr(preflight, "cuda_available", lambda: False)
    with pytest.raises(RecipeError, match=r"^key 'attn_implementation': flash_attention_2 runs on CUDA GPUs only .*"
                                          r"set attn_implementation: sdpa$"):
        preflight.check_attention("flash_attention_2")
    preflight.check_attention("sdpa")  # nothing to check


def test_push_to_hub_offline_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = sft_recipe(tmp_path, str(tmp_path / "model"), write_lines(tmp_path / "rows.jsonl", jsonl_lines(GOOD)))
    line = cli_error(capsys, "sft", str(recipe), "--push_to_hub", "true")
    assert line == ("zephyr: error: key 'push_to_hub': true, but HF_HUB_OFFLINE=1 is set (offline mode): set "
                    "push_to_hub: false (the model is saved in output_dir either way; `huggingface-cli upload` sends "
                    "it later), or go online")
    assert_nothing_written(tmp_path / "out")
    # no offline flag, but no network either (nothing listens on port 9 here)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert preflight.hub_offline_reason().startswith("127.0.0.1 cannot be reached")


NO_EVAL_WAYS_OUT = ("set eval_strategy: no, or give the data an eval split (dataset_test_split, a dataset_mixture "
                    "source with role: test, or dataset_mixture.test_split_size to hold out some training rows)")


def test_eval_strategy_without_an_eval_set_is_an_error(tmp_path, capsys):
    prefs = write_lines(tmp_path / "prefs.jsonl", jsonl_lines(
        [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]))
    recipe = dpo_recipe(tmp_path, str(tmp_path / "model"), prefs, "eval_strategy: epoch\n")
    expected = (f"zephyr: error: eval_strategy: epoch needs an eval set, but dataset_name {prefs} is a single file "
                f"(one split: the training rows): {NO_EVAL_WAYS_OUT}")
    assert cli_error(capsys, "dpo", str(recipe)) == expected
    assert_nothing_written(tmp_path / "out")
    assert cli_error(capsys, "dpo", str(recipe), "--dry-run") == expected
    # the shipped tiny recipe (eval_strategy: epoch) pointed at such a file says the same
    shipped = cli_error(capsys, "dpo", str(REPO / "recipes/tiny/dpo.yaml"), "--dataset_name", str(prefs),
                        "--output_dir", str(tmp_path / "out"))
    assert shipped == expected
    assert_nothing_written(tmp_path / "out")


def test_eval_strategy_with_a_missing_default_test_split(tmp_path, capsys, tiny_dir):
    """A folder without the default 'test' split is only known to lack it once loaded: the Trainer's refusal
    becomes the same one-line error."""
    recipe = sft_recipe(tmp_path, str(tiny_dir / "model"), tiny_dir / "data" / "sft")
    line = cli_error(capsys, "sft", str(recipe), "--dataset_train_split", "train_sft", "--max_train_samples", "8",
                     "--long_rows", "drop", "--eval_strategy", "epoch")
    assert line == (f"zephyr: error: eval_strategy: epoch needs an eval set, but {tiny_dir / 'data' / 'sft'} has no "
                    f"split 'test': {NO_EVAL_WAYS_OUT}")
    assert_nothing_written(tmp_path / "out")


def test_test_split_size_larger_than_the_data_through_the_cli(tmp_path, capsys, tiny_dir):
    one_row = write_lines(tmp_path / "one.jsonl", jsonl_lines(GOOD[:1]))
    recipe = sft_recipe(tmp_path, str(tiny_dir / "model"), one_row)
    line = cli_error(capsys, "sft", str(recipe), "--dataset_mixture",  # replaces the file's dataset_name
                     f"{{datasets: [{{id: {one_row}}}], test_split_size: 0.1}}")
    assert line.startswith("zephyr: error: dataset_mixture.test_split_size: 0.1 holds out 1 of the 1 training row, "
                           "leaving none to train on")
    assert_nothing_written(tmp_path / "out")


def test_cli_empty_recipe_names_the_file(tmp_path, capsys):
    empty = tmp_path / "recipe.yaml"
    empty.write_text("", encoding="utf-8")
    assert cli_error(capsys, "sft", str(empty)) == (
        f"zephyr: error: {empty}: missing required key(s) model_name_or_path (a hub id or a local model folder), "
        "dataset_name or dataset_mixture (the training data) (see `zephyr sft --help` for every key)")


@pytest.mark.parametrize("stage", ["sft", "dpo", "aif", "eval"])
def test_stage_without_any_argument_prints_its_usage(capsys, stage):
    assert cli_error(capsys, stage) == (f"zephyr: error: no recipe given. usage: zephyr {stage} RECIPE.yaml "
                                        f"[--key value ...]; see `zephyr {stage} --help` for every key")


def test_docs_table_names_only_existing_tests():
    """Every test the table in docs/hostile-input.md points to exists."""
    table = (REPO / "docs" / "hostile-input.md").read_text(encoding="utf-8")
    named = {tuple(ref.split("::")) for ref in re.findall(r"`(test_\w+\.py::test_\w+)`", table)}
    assert len(named) >= 11
    for file, name in named:
        assert f"def {name}(" in (REPO / "tests" / file).read_text(encoding="utf-8"), f"{file}::{name}"



# ---------------------------------------------------------------------------------------------------------------
# type inference, content parts, keys given twice, lone surrogates, hub ids offline, command-line mappings


def test_numeric_string_answers_stay_text_and_text_parts_are_joined(tmp_path):
    """Answers "1".."20" with one row whose content is a list of OpenAI-style text parts: datasets' pandas
    fallback turned the answers into ints and the error named row 0. The rows are read as written instead."""
    rows = [{"messages": [u(f"count to {i}"), a(str(i))]} for i in range(1, 21)]
    rows[3]["messages"][1]["content"] = [{"type": "text", "text": "four"}, {"type": "text", "text": "4"}]
    path = write_lines(tmp_path / "rows.jsonl", jsonl_lines(rows))
    train, _, report = prepare_datasets(DataArguments(dataset_name=str(path)), "sft")
    answers = sorted(m[1]["content"] for m in train["messages"])
    assert len(answers) == 20 and "four\n4" in answers and "17" in answers and report.dropped == {}


def test_a_non_text_content_part_names_its_line(tmp_path):
    rows = [{"messages": [u(f"q{i}"), a(f"a{i}")]} for i in range(5)]
    rows[3]["messages"][0]["content"] = [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": "x.png"}}]
    path = write_lines(tmp_path / "rows.jsonl", jsonl_lines(rows))
    with pytest.raises(DataError) as err:
        prepare_datasets(DataArguments(dataset_name=str(path)), "sft")
    assert str(err.value) == (f"{path}: line 4: 'messages[0].content'[1]: expected a text part "
                              '{"type": "text", "text": ...}, got a part of type \'image_url\'; only text content '
                              "can be trained on")


@pytest.mark.parametrize(("line", "expected"), [
    ('{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]}',
     "line 21: the key 'content' appears twice in one object; expected each key once per object"),
    ('{"messages": [{"role": "user", "content": "half \\ud800 a pair"}, {"role": "assistant", "content": "c"}]}',
     "line 21: a lone surrogate \\ud800 in 'half '...; expected valid Unicode text (a surrogate pair's two "
     "halves, or the character itself)"),
])
def test_a_key_given_twice_or_a_lone_surrogate_names_its_line(tmp_path, line, expected):
    lines = jsonl_lines([{"messages": [u(f"q{i}"), a(f"a{i}")]} for i in range(20)]) + [line]
    path = write_lines(tmp_path / "rows.jsonl", lines)
    assert first_json_problem(path) == expected


def test_a_hub_model_not_in_the_cache_without_network_fails_at_once(tmp_path, monkeypatch):
    """No HF_HUB_OFFLINE and no network: one probe (5 s at most), then a line saying what to do, instead of
    the download retrying for a minute or more."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    model_args = ModelArguments(model_name_or_path="some-org/not-downloaded-7b")
    t0 = time.time()
    with pytest.raises(RecipeError) as err:
        preflight.check_hub_reachable(model_args, DataArguments(dataset_name=str(tmp_path)))
    assert time.time() - t0 < 10
    assert str(err.value).startswith("model_name_or_path: some-org/not-downloaded-7b is a hub id that is not in "
                                     "this machine's cache, and 127.0.0.1 cannot be reached")
    assert "`huggingface-cli download some-org/not-downloaded-7b`" in str(err.value)
    preflight.check_hub_reachable(ModelArguments(model_name_or_path=str(tmp_path)))  # a local folder: no probe


def test_a_handbook_dataset_mixer_given_on_the_command_line(tmp_path):
    """`dataset_mixer={path: 1.0}` as the classic recipes spell it, pointed at local data from the command line."""
    data = write_lines(tmp_path / "rows.jsonl", jsonl_lines(GOOD))
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model_name_or_path: m\ndataset_mixer: {HuggingFaceH4/ultrachat_200k: 1.0}\n"
                      "dataset_splits: [train_sft, test_sft]\noutput_dir: out\n", encoding="utf-8")
    _, data_args, _ = parse_stage_args([str(recipe), f"dataset_mixer={{{data}: 1.0}}",
                                        "dataset_splits=train,test"], (ModelArguments, DataArguments,
                                                                       ZephyrSFTConfig), "sft")
    assert [d["id"] for d in data_args.dataset_mixture["datasets"]] == [str(data), str(data)]


def test_half_precision_weights_without_mixed_precision_are_said_before_the_run(tmp_path, capsys):
    """A handbook recipe's `torch_dtype: bfloat16` run with `bf16=false`: the dry run says what will happen."""
    from zephyr.plan import dry_run_stage

    data = write_lines(tmp_path / "rows.jsonl", jsonl_lines(GOOD))
    recipe = sft_recipe(tmp_path, str(tmp_path), data)
    lines = dry_run_stage("sft", [str(recipe), "torch_dtype=bfloat16", "bf16=false"])
    (precision,) = [line for line in lines if "precision:" in line]
    assert "dtype bfloat16 with bf16: false and fp16: false: the weights, their gradients and the optimizer's " \
           "updates are all bfloat16" in precision
    assert not [line for line in dry_run_stage("sft", [str(recipe), "dtype=float32"]) if "master weights" in line]


def test_tiny_model_and_shard_mistakes_are_one_line(tmp_path, capsys):
    """`zephyr tiny-model` into a folder that cannot be made, or with a width no model has; `--shard 3/2`."""
    (tmp_path / "file").write_text("x")
    assert cli_error(capsys, "tiny-model", "--output-dir", str(tmp_path / "file" / "tiny")).startswith(
        f"zephyr: error: --output-dir {tmp_path / 'file' / 'tiny'}: cannot write there (")
    with pytest.raises(SystemExit) as stop:  # argparse's own one-line usage error
        cli_main(["tiny-model", "--hidden-size", "0", "--output-dir", str(tmp_path / "t")])
    assert stop.value.code == 2
    assert "--hidden-size: expected a multiple of 8 (4 heads of even width), got 0" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    line = cli_error(capsys, "aif", str(REPO / "recipes/tiny/aif.yaml"), "--shard", "3/2")
    assert line == "zephyr: error: shard: expected i/n with 0 <= i < n, e.g. 0/4; got '3/2'"


def test_run_from_and_only_together_are_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main(["run", str(REPO / "recipes/tiny"), "--from", "sft", "--only", "dpo", "--dry-run"])
    assert stop.value.code == 2
    assert "argument --only: not allowed with argument --from" in capsys.readouterr().err
