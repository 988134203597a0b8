"""AIF against a real HTTP server on 127.0.0.1: the OpenAI-compatible backend (auth, retries, timeouts, garbled
answers, 4xx) and the LLM judge (rubric parsing end to end, re-asks, shuffled answer order)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest
import yaml
from aif_fakes import CORRECT, WRONG, FakeOpenAI, Fault, rationale

from zephyr import cli
from zephyr.aif.keys import key_parts
from zephyr.aif.pipeline import completion_key
from zephyr.embedded.tasks import make_rows, solve
from zephyr.inference.backends import EndpointError
from zephyr.inference.settings import GeneratorConfig
from zephyr.stages import aif

SECRET = "sk-test-SECRET-123"
KEY_ENV = "ZEPHYR_TEST_KEY"
TRAIN = Path("data") / "train_prefs-00000-of-00001.parquet"


@pytest.fixture
def server():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    """24 distinct task prompts (all three kinds) with their ids, as a jsonl file."""
    rows, seen = [], set()
    for row in make_rows(60, seed=7, kind="prefs"):
        if row["prompt_id"] not in seen:
            seen.add(row["prompt_id"])
            rows.append({"prompt_id": row["prompt_id"], "prompt": row["prompt"]})
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    return path


def prompt_list(prompts_file: Path) -> list[dict]:
    return [json.loads(x) for x in prompts_file.read_text().splitlines()]


def endpoint(server: FakeOpenAI, model: str, **kw) -> dict:
    return {"backend": "openai", "base_url": server.base_url, "model": model, "api_key_env": KEY_ENV,
            "timeout": 5.0, "max_retries": 2, "retry_backoff": 0.01, "concurrency": 4, **kw}


def write_recipe(tmp_path: Path, server: FakeOpenAI, prompts_file: Path, n: int, generators=None, judge=None,
                 **extra) -> Path:
    """solver (greedy, right) + guesser (sampled, 2 answers, wrong) on the fake server, judged by its LLM judge."""
    cfg = {
        "prompts": {"id": str(prompts_file), "max_prompts": n},
        "generators": generators or [
            {"name": "solver", **endpoint(server, "solver"), "temperature": 0.0, "max_new_tokens": 32},
            {"name": "guesser", **endpoint(server, "guesser"), "temperature": 0.8, "num_completions": 2,
             "max_new_tokens": 32, "seed": 3},
        ],
        "judge": judge or {"type": "llm", **endpoint(server, "judge"), "max_new_tokens": 256,
                           "max_parse_retries": 2},
        "binarization": {"score": "mean_aspects", "rejected": "random", "ties": "keep"},
        "output_dir": str(tmp_path / "aif"),
        **extra,
    }
    path = tmp_path / "aif.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def dataset_rows(out: Path, split: str = "train_prefs") -> list[dict]:
    return datasets.load_dataset("parquet", data_files=str(out / "data" / f"{split}-00000-of-00001.parquet"),
                                 split="train").to_list()


def store_keys(path: Path) -> Counter:
    return Counter(r["key"] for r in read_jsonl(path))


# ------------------------------------------------------------------------------------------------ end to end
def test_zephyr_aif_on_openai_endpoints_with_llm_judge(server, prompts_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, SECRET)
    path = write_recipe(tmp_path, server, prompts_file, n=6)
    assert cli.main(["aif", str(path)]) == 0
    out = tmp_path / "aif"

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["prompts"], summary["completions"], summary["completions_new"]) == (6, 18, 18)
    assert (summary["judged_prompts"], summary["judged_new"], summary["pairs"]) == (6, 6, 6)
    assert summary["failures"] == {} and summary["dropped"] == {}

    # What the server was asked: 6 x (1 + 2) answers and 6 judgments, every one with the key, nothing retried.
    assert server.count("generate", "solver") == 6 and server.count("generate", "guesser") == 12
    assert server.count("judge", "judge") == 6 and server.count() == 24
    assert {c.authorization for c in server.calls} == {f"Bearer {SECRET}"}
    assert len({(c.kind, c.model, c.prompt, c.seed) for c in server.calls}) == 24  # no request repeated
    solver = server.select("generate", "solver")
    assert {(c.temperature, c.max_tokens) for c in solver} == {(0.0, 32)}
    assert {(c.temperature, c.max_tokens) for c in server.select("judge")} == {(0.0, 256)}
    guesser_seeds = [c.seed for c in server.select("generate", "guesser")]
    assert len(set(guesser_seeds)) == 12  # every sampled answer asks with its own seed

    rows = dataset_rows(out)
    prompts = {p["prompt_id"]: p["prompt"] for p in prompt_list(prompts_file)[:6]}
    assert sorted(r["prompt_id"] for r in rows) == sorted(prompts)
    for row in rows:
        assert row["prompt"] == prompts[row["prompt_id"]]
        assert row["chosen"][1]["content"] == solve(row["prompt"])  # the right answer is chosen...
        assert row["rejected"][1]["content"] != solve(row["prompt"])  # ...over a wrong one
        assert (row["score_chosen"], row["score_rejected"]) == (5.0, 2.0)
        assert row["messages"] == row["chosen"]

    # The key went only into the Authorization header: not into any file written, nor the log.
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"completions.jsonl", "judgments.jsonl", "raw.jsonl", "summary.json",
                                       TRAIN.name}
    for p in [*files, path]:
        assert SECRET.encode() not in p.read_bytes(), p
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err

    # A rerun finds everything stored and asks the server nothing.
    server.reset()
    before = (out / TRAIN).read_bytes()
    assert cli.main(["aif", str(path)]) == 0
    assert server.count() == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["completions_new"], summary["judged_new"], summary["pairs"]) == (0, 0, 6)
    assert (out / TRAIN).read_bytes() == before


# ------------------------------------------------------------------------------------------------ faults
def test_transport_faults_are_retried_recorded_and_filled_in_by_a_rerun(server, prompts_file, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    p = [x["prompt"] for x in prompt_list(prompts_file)[:8]]
    plan = {  # (model, prompt) -> how the server misbehaves
        ("solver", p[0]): lambda n: Fault(status=500) if n <= 2 else None,  # 500 twice, then fine
        ("solver", p[1]): lambda n: Fault(status=503),  # always 5xx
        ("solver", p[2]): lambda n: Fault(sleep=1.0) if n == 1 else None,  # too slow once
        ("guesser", p[3]): lambda n: Fault(raw=b"<html>bad gateway</html>"),  # never JSON
        ("guesser", p[4]): lambda n: Fault(raw=b'{"error": "overloaded"}') if n == 1 else None,  # no choices once
        ("solver", p[5]): lambda n: Fault(sleep=1.0),  # always too slow
        ("guesser", p[6]): lambda n: Fault(raw=b'{"choices": []}') if n <= 2 else None,  # empty twice
    }
    server.reset(lambda call: plan[(call.model, call.prompt)](call.nth) if (call.model, call.prompt) in plan
                 else None)
    gen = {"temperature": 0.0, "max_new_tokens": 32, "timeout": 0.3}
    generators = [{"name": "solver", **endpoint(server, "solver"), **gen},
                  {"name": "guesser", **endpoint(server, "guesser"), **gen}]
    path = write_recipe(tmp_path, server, prompts_file, n=8, generators=generators)
    summary = aif.main([str(path), "--max_failure_rate", "1"])  # finish despite failures (default: exit 3)
    out = tmp_path / "aif"

    attempts = {prompt: (server.count("generate", "solver", prompt), server.count("generate", "guesser", prompt))
                for prompt in p}
    # max_retries 2: at most 3 attempts per answer; a success ends the retries.
    assert [attempts[x] for x in p] == [(3, 1), (3, 1), (2, 1), (1, 3), (1, 2), (3, 1), (1, 3), (1, 1)]

    failures = read_jsonl(out / "failures.jsonl")
    settings = {g["name"]: GeneratorConfig(**g) for g in generators}
    lost = {completion_key(pid, settings[m], 0): m
            for m, i in (("solver", 1), ("guesser", 3), ("solver", 5))
            for pid in [prompt_list(prompts_file)[i]["prompt_id"]]}
    assert {f["key"] for f in failures} == set(lost) and len(failures) == 3
    reasons = {f["key"]: f["reason"] for f in failures}
    assert {f["kind"] for f in failures} == {"generation"}
    by_prompt = {key_parts(k)[0]: r for k, r in reasons.items()}
    ids = [x["prompt_id"] for x in prompt_list(prompts_file)[:8]]
    assert by_prompt[ids[1]] == "HTTP 503: fake 503 (after 3 attempts)"  # with the server's own words
    assert by_prompt[ids[3]] == "invalid response (not an OpenAI chat completion) (after 3 attempts)"
    assert by_prompt[ids[5]].startswith("timeout: ") and by_prompt[ids[5]].endswith("(after 3 attempts)")
    assert dict(summary.failures) == {"generation: HTTP 503": 1, "generation: timeout": 1,
                                      "generation: invalid response (not an OpenAI chat completion)": 1}
    assert json.loads((out / "summary.json").read_text())["failures"] == dict(summary.failures)

    # Every answer that came back is stored, once; prompts left with one answer cannot be judged.
    assert summary.completions_new == 13 and sum(store_keys(out / "completions.jsonl").values()) == 13
    assert max(store_keys(out / "completions.jsonl").values()) == 1
    assert server.count("judge") == 5 and summary.judged_new == 5
    assert summary.pairs == 5 and dict(summary.dropped) == {"fewer than 2 rated answers": 3}
    assert sorted(r["prompt_id"] for r in dataset_rows(out)) == sorted(set(ids) - {ids[1], ids[3], ids[5]})

    # The server is fixed: a rerun asks for exactly the 3 missing answers and judges exactly those 3 prompts.
    first_seeds = {(c.model, c.prompt): c.seed for c in server.select("generate")}
    server.reset()
    summary = aif.main([str(path)])
    assert sorted((c.model, c.prompt) for c in server.select("generate")) == sorted(
        [("solver", p[1]), ("guesser", p[3]), ("solver", p[5])])
    assert all(c.seed == first_seeds[(c.model, c.prompt)] for c in server.select("generate"))  # asked alike
    assert sorted(c.prompt for c in server.select("judge")) == sorted([p[1], p[3], p[5]])
    assert (summary.completions_new, summary.judged_new, summary.pairs) == (3, 3, 8)
    assert not summary.failures and not summary.dropped
    keys = store_keys(out / "completions.jsonl")
    assert len(keys) == 16 and set(keys.values()) == {1}
    assert len(read_jsonl(out / "failures.jsonl")) == 3  # the log of the first run is kept, nothing added
    rows = dataset_rows(out)
    assert len(rows) == 8 and all(r["chosen"][1]["content"] == solve(r["prompt"]) for r in rows)


def test_client_errors_are_not_retried(server, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    server.reset(lambda call: Fault(status=401))
    path = write_recipe(tmp_path, server, prompts_file, n=3)
    # A bad key does not get better by asking again: the stage stops at the first answer, with its message.
    with pytest.raises(EndpointError, match=r"solver at .*: HTTP 401: fake 401"):
        aif.main([str(path)])
    out = tmp_path / "aif"
    assert 1 <= server.count("generate") <= 4  # the requests in flight (concurrency 4), each asked once
    assert max(Counter((c.model, c.prompt) for c in server.calls).values()) == 1
    assert server.count("judge") == 0
    assert not (out / "completions.jsonl").exists() or not read_jsonl(out / "completions.jsonl")
    assert not (out / TRAIN).exists()


# ------------------------------------------------------------------------------------------------ judge
def test_judge_output_is_reasked_when_unparsable_and_failures_drop_the_prompt(server, prompts_file, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    p = [x["prompt"] for x in prompt_list(prompts_file)[:5]]
    ids = [x["prompt_id"] for x in prompt_list(prompts_file)[:5]]
    out_of_range = "".join(f"### Answer {i}\nInstruction following: 7\nHonesty: 5\nTruthfulness: 5\nHelpfulness: 5\n"
                           for i in (1, 2, 3))

    def fault(call):
        if call.kind != "judge":
            return None
        if call.prompt == p[0] and call.nth == 1:
            return Fault(content="Both answers look fine to me.")  # no blocks at all, once
        if call.prompt == p[1]:
            return Fault(content=out_of_range)  # always unusable
        if call.prompt == p[2]:
            return Fault(status=500)  # the transport fails, retried by the backend
        return None

    server.reset(fault)
    summary = aif.main([str(write_recipe(tmp_path, server, prompts_file, n=5)), "--max_failure_rate", "1"])
    out = tmp_path / "aif"

    # max_parse_retries 2: p0 is asked twice, p1 three times; p2's transport is retried (max_retries 2).
    assert [server.count("judge", prompt=x) for x in p] == [2, 3, 3, 1, 1]
    judged = {r["prompt_id"] for r in read_jsonl(out / "judgments.jsonl")}
    assert judged == {ids[0], ids[3], ids[4]}
    failures = {f["key"]: f for f in read_jsonl(out / "failures.jsonl")}
    assert set(failures) == {ids[1], ids[2]} and {f["kind"] for f in failures.values()} == {"judge"}
    assert failures[ids[1]]["reason"] == ("unparsable judge output after 3 attempts: "
                                          "answer 1: instruction_following rating 7 is outside 1-5")
    assert failures[ids[2]]["reason"] == "judge request failed: HTTP 500: fake 500 (after 3 attempts)"
    assert dict(summary.failures) == {"judge: unparsable judge output after 3 attempts": 1,
                                      "judge: judge request failed": 1}
    assert summary.pairs == 3 and dict(summary.dropped) == {"fewer than 2 rated answers": 2}
    rows = dataset_rows(out)
    assert sorted(r["prompt_id"] for r in rows) == sorted([ids[0], ids[3], ids[4]])
    assert all(r["chosen"][1]["content"] == solve(r["prompt"]) for r in rows)

    # With a judge that behaves, a rerun judges exactly the two failed prompts and generates nothing.
    server.reset()
    summary = aif.main([str(write_recipe(tmp_path, server, prompts_file, n=5))])
    assert server.count("generate") == 0 and sorted(c.prompt for c in server.calls) == sorted([p[1], p[2]])
    assert (summary.judged_new, summary.pairs) == (2, 5)


def test_answer_order_shown_to_the_judge_is_shuffled_and_mapped_back(server, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    n = 12
    path = write_recipe(tmp_path, server, prompts_file, n=n)
    summary = aif.main([str(path)])
    out = tmp_path / "aif"
    assert summary.judged_new == n

    completions = {r["key"]: r for r in read_jsonl(out / "completions.jsonl")}
    by_prompt = {}
    for r in completions.values():  # the order the pipeline hands the judge: generator, then sample
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    order = {"solver": 0, "guesser": 1}
    prompts = {x["prompt"]: x["prompt_id"] for x in prompt_list(prompts_file)[:n]}
    texts = {pid: text for text, pid in prompts.items()}
    positions = []
    for call in server.select("judge"):
        pid = prompts[call.prompt]
        original = [r["response"] for r in sorted(by_prompt[pid], key=lambda r: (order[r["model"]], r["sample_index"]))]
        assert sorted(call.answers) == sorted(original) and len(call.answers) == 3
        positions.append(call.answers.index(solve(call.prompt)))  # where the right answer (first given) was shown
    assert len(positions) == n and len(set(positions)) == 3  # not always in the order given

    # Each stored judgment belongs to its own completion: right answers rated high, the rationale quotes it.
    for record in read_jsonl(out / "judgments.jsonl"):
        assert len(record["completions"]) == 3
        for key, judgment in record["completions"].items():
            response = completions[key]["response"]
            right = response == solve(texts[record["prompt_id"]])
            expected = CORRECT if right else WRONG
            assert judgment["ratings"] == {a: None if v == "N/A" else float(v) for a, v in expected.items()}
            assert set(judgment["rationales"].values()) == {rationale(response)}
            assert right == (completions[key]["model"] == "solver")
    rows = dataset_rows(out)
    assert len(rows) == n and all(r["chosen"][1]["content"] == solve(r["prompt"]) for r in rows)
    assert {(r["score_chosen"], r["score_rejected"]) for r in rows} == {(5.0, 2.0)}

    # Another judge seed shows other orders (and, its settings differing, re-judges everything).
    shown = {c.prompt: c.answers for c in server.select("judge")}
    server.reset()
    summary = aif.main([str(path), "--judge.seed", "1"])
    assert summary.judged_new == n and server.count("generate") == 0
    assert any(c.answers != shown[c.prompt] for c in server.select("judge"))


# ------------------------------------------------------------------------------------------------ config errors
def test_missing_api_key_variable_is_a_clear_error(server, prompts_file, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = write_recipe(tmp_path, server, prompts_file, n=2)
    with pytest.raises(EndpointError, match=f"environment variable {KEY_ENV} is not set"):
        aif.main([str(path)])
    assert server.count() == 0
    # The judge's variable is checked too (here the generators need no key).
    monkeypatch.setenv("ZEPHYR_OTHER_KEY", SECRET)
    path = write_recipe(tmp_path, server, prompts_file, n=2, generators=[
        {"name": name, **endpoint(server, name), "api_key_env": "ZEPHYR_OTHER_KEY", "temperature": 0.0}
        for name in ("solver", "guesser")])
    with pytest.raises(EndpointError, match=f"environment variable {KEY_ENV} is not set"):
        aif.main([str(path)])
    assert server.count("judge") == 0


# ------------------------------------------------------------------------------------------------ per turn
def test_every_turn_of_a_dialogue_is_answered_in_context_judged_in_context_and_paired(server, prompts_file,
                                                                                       tmp_path, monkeypatch):
    """prompts.turns: every: each user turn of an UltraChat-style dialogue is a prompt, the dialogue before it
    (with its own replies) sent as context to the generators and shown to the judge; each turn makes a pair."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    tasks = [p["prompt"] for p in prompt_list(prompts_file)[:6]]
    dialogues = [{"prompt_id": f"d{i}", "messages": [
        {"role": "user", "content": tasks[2 * i]}, {"role": "assistant", "content": f"reply {i}"},
        {"role": "user", "content": tasks[2 * i + 1]}, {"role": "assistant", "content": "ok"}]} for i in range(3)]
    source = tmp_path / "dialogues.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in dialogues))
    path = write_recipe(tmp_path, server, source, n=None)
    cfg = yaml.safe_load(path.read_text())
    cfg["prompts"]["turns"] = "every"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["aif", str(path)]) == 0

    first = {"role": "user", "content": tasks[0]}
    context = [first, {"role": "assistant", "content": "reply 0"}]
    asked = [c.body["messages"] for c in server.select("generate", "solver")]
    assert [first] in asked and [*context, {"role": "user", "content": tasks[1]}] in asked
    judged = next(c for c in server.select("judge") if c.prompt == tasks[1])
    shown = judged.body["messages"][-1]["content"]
    assert f"User: {tasks[0]}\n\nAssistant: reply 0" in shown and shown.index("reply 0") < shown.index(tasks[1])

    rows = {r["prompt_id"]: r for r in dataset_rows(tmp_path / "aif")}
    assert sorted(rows) == ["d0", "d0#turn1", "d1", "d1#turn1", "d2", "d2#turn1"]
    later = rows["d0#turn1"]
    assert later["prompt"] == tasks[1]
    assert later["chosen"] == [*context, {"role": "user", "content": tasks[1]},
                               {"role": "assistant", "content": solve(tasks[1])}]
    assert later["rejected"][:3] == later["chosen"][:3] and later["rejected"][3]["content"] != solve(tasks[1])
    assert rows["d0"]["chosen"] == [first, {"role": "assistant", "content": solve(tasks[0])}]

    # turns: first (Zephyr's prompts) is the first turn of each dialogue: its answers are already stored
    server.reset()
    cfg["prompts"]["turns"] = "first"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["aif", str(path)]) == 0
    assert server.count() == 0 and sorted(r["prompt_id"] for r in dataset_rows(tmp_path / "aif")) == ["d0", "d1", "d2"]


def test_every_backend_declares_what_it_is():
    """The planner and the stages ask a backend's capabilities instead of checking its name: every backend has
    them, and a remote one is never taken for a model this process loads."""
    import types
    from typing import get_args

    from zephyr.inference.backends import BACKENDS
    from zephyr.inference.settings import CAPABILITIES, Backend, GeneratorConfig, JudgeConfig
    from zephyr.plan import gpus_per_worker, runs_local_models

    assert set(get_args(Backend)) == set(CAPABILITIES) == set(BACKENDS)
    remote = GeneratorConfig(name="a", backend="openai", model="m", tensor_parallel_size=4)
    assert remote.gpus == 1 and not remote.capabilities.local and remote.capabilities.independent_requests
    served = types.SimpleNamespace(generators=[remote], judge=JudgeConfig(type="llm", backend="openai", model="j"))
    assert not runs_local_models(served) and gpus_per_worker(served) == 1
    local_judge = types.SimpleNamespace(generators=[remote], judge=JudgeConfig(type="llm", backend="vllm",
                                                                               model="j", tensor_parallel_size=2))
    assert runs_local_models(local_judge) and gpus_per_worker(local_judge) == 2
