"""A failed request is never a result (issue 12): AIF and eval against OpenAI-compatible servers that fail in
the ways real ones do. One test per numbered point; the server is the scriptable fake in tests/aif_fakes.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aif_fakes import FakeOpenAI, Fault
from test_aif_backends import TRAIN, dataset_rows, endpoint, prompt_list, prompts_file, read_jsonl  # noqa: F401

from zephyr import cli
from zephyr.embedded.tasks import solve

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "ZEPHYR_TEST_KEY"


@pytest.fixture
def servers():
    """Two fake servers: one serves the generators (or the eval's models), the other the judge."""
    a, b = FakeOpenAI().start(), FakeOpenAI().start()
    yield a, b
    for s in (a, b):
        s.stop()


def aif_recipe(tmp_path: Path, gen_server: FakeOpenAI, judge_server: FakeOpenAI, prompts: Path, n: int,
               **extra) -> Path:
    cfg = {"prompts": {"id": str(prompts), "max_prompts": n},
           "generators": [{"name": "solver", **endpoint(gen_server, "solver"), "temperature": 0.0},
                          {"name": "guesser", **endpoint(gen_server, "guesser"), "temperature": 0.8,
                           "num_completions": 2, "seed": 3}],
           "judge": {"type": "llm", **endpoint(judge_server, "judge"), "max_parse_retries": 1},
           "binarization": {"score": "mean_aspects", "rejected": "random", "ties": "keep"},
           "output_dir": str(tmp_path / "aif"), **extra}
    path = tmp_path / "aif.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def eval_recipe(tmp_path: Path, questions: Path, sft: str, dpo: str, judge: dict | None = None, **extra) -> Path:
    model = {"backend": "openai", "timeout": 5.0, "max_retries": 1, "retry_backoff": 0.01, "concurrency": 4,
             "temperature": 0.0, "max_new_tokens": 32}
    cfg = {"questions": str(questions),
           "models": [{"name": "sft", **model, "base_url": sft, "model": "guesser"},
                      {"name": "dpo", **model, "base_url": dpo, "model": "solver"}],
           "judge": judge or {"type": "callable", "callable": "zephyr.embedded.tasks:judge"},
           "mode": "both", "baseline": "sft", "bootstrap_samples": 100, "output_dir": str(tmp_path / "eval"),
           **extra}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def questions(prompts_file, tmp_path):  # noqa: F811
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question_id": p["prompt_id"], "turns": [p["prompt"]]}) + "\n"
                            for p in prompt_list(prompts_file)[:8]))
    return path


def records(path: Path) -> list[dict]:
    return [r for f in sorted(path.glob("eval_records.*.jsonl")) for r in read_jsonl(f)]


# 1. ----------------------------------------------------------------------------------- eval: failures are not answers
def test_eval_with_a_model_endpoint_down_stores_nothing_for_it_and_the_rerun_completes(servers, questions, tmp_path,
                                                                                     capsys):
    up, down = servers
    down_url = down.base_url
    down.stop()  # nothing listens there any more
    recipe = eval_recipe(tmp_path, questions, up.base_url, down_url)
    assert cli.main(["eval", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"zephyr: error: solver at {down_url}: connection error" in err and "is the server running?" in err
    stored = records(tmp_path / "eval")
    assert stored and {r["model"] for r in stored if "answer" in r} == {"sft"}  # no empty answer stored for dpo
    assert not (tmp_path / "eval" / "results.json").exists()

    # The server comes back on another port: sft's answers are reused (base_url is not part of their key).
    with FakeOpenAI() as back:
        up.reset()
        recipe = eval_recipe(tmp_path, questions, up.base_url, back.base_url)
        assert cli.main(["eval", str(recipe)]) == 0
        assert up.count() == 0 and back.count("generate", "solver") == 8
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["models"]["dpo"]["score"]["mean"] == 10.0  # the solver answers every task right
    assert results["models"]["dpo"]["missing_questions"] == 0 and results["missing"]["results"] == 0


def test_eval_transient_failures_are_left_out_counted_and_retried(servers, questions, tmp_path, capsys):
    server, _ = servers
    first = prompt_list_of(questions)[-3:]  # not the very first request: that one is a probe (see test 3)
    server.reset(lambda call: Fault(status=503) if call.model == "solver" and call.prompt in first else None)
    recipe = eval_recipe(tmp_path, questions, server.base_url, server.base_url)
    assert cli.main(["eval", str(recipe)]) == 3
    err = capsys.readouterr().err
    # 40 results asked for: 16 answers, 16 grades, 8 verdicts; dpo misses 3 of each
    assert "zephyr: incomplete: eval answers and grades: 9 of 40 missing" in err
    assert "answer: HTTP 503" in err and "fake 503" in err  # counted by reason, with the server's own words
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    dpo = results["models"]["dpo"]
    assert dpo["missing_questions"] == 3 and dpo["score"]["n"] == 5  # estimates from the 5 answered questions
    assert dpo["score_minus_baseline"]["questions"] == 5
    assert "Missing (failed or ungraded" in (tmp_path / "eval" / "results.md").read_text()
    failures = read_jsonl(tmp_path / "eval" / "failures.jsonl")
    assert len(failures) == 3 and {f["kind"] for f in failures} == {"answer"}

    server.reset()  # recovered: the rerun asks exactly the three failed questions
    assert cli.main(["eval", str(recipe)]) == 0
    assert sorted(c.prompt for c in server.calls) == sorted(first)
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["models"]["dpo"]["score"]["n"] == 8


def prompt_list_of(questions: Path) -> list[str]:
    return [json.loads(x)["turns"][0] for x in questions.read_text().splitlines()]


def test_eval_llm_judge_that_never_parses_grades_nothing_and_is_asked_again(servers, questions, tmp_path, capsys):
    models, judge = servers
    judge.reset(lambda call: Fault(content="I like both answers."))  # never a rating or a verdict
    llm = {"type": "llm", **endpoint(judge, "grader"), "api_key_env": None, "max_parse_retries": 1}
    recipe = eval_recipe(tmp_path, questions, models.base_url, models.base_url, judge=llm)
    assert cli.main(["eval", str(recipe)]) == 3
    assert "incomplete: eval answers and grades: 24 of 40 missing" in capsys.readouterr().err  # every grade
    stored = records(tmp_path / "eval")
    assert not any("score" in r or "outcome" in r for r in stored)  # no null grade stored
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "score" not in results["models"]["sft"] and results["models"]["sft"]["missing_questions"] == 8
    assert "win_rate_vs_baseline" not in results["models"]["dpo"]

    judge.reset(grade)
    models.reset()
    assert cli.main(["eval", str(recipe)]) == 0
    assert models.count() == 0  # answers were stored; only grading is redone
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["models"]["dpo"]["score"]["mean"] == 9.0 and results["models"]["sft"]["score"]["mean"] == 3.0
    assert results["models"]["dpo"]["win_rate_vs_baseline"]["mean"] == 1.0


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


def grade(call) -> Fault:
    """A judge that works: rating 9 for a right task answer and 3 otherwise; the right answer wins a pair."""
    user = call.body["messages"][-1]["content"]
    right = solve(between(user, "### User:\n", "\n\n"))
    if "[Answer A]" in user:
        a, b = between(user, "[Answer A]\n", "\n\n[Answer B]"), between(user, "[Answer B]\n", "\n\n")
        return Fault(content="[[A]]" if a == right != b else "[[B]]" if b == right != a else "[[C]]")
    answer = between(user, "[Assistant's answer to the last turn]\n", "\n\nJudge")
    return Fault(content="Rating: [[9]]" if answer == right else "Rating: [[3]]")


# 2. ----------------------------------------------------------------------------------- AIF: all failed is not done
@pytest.mark.slow
def test_aif_whose_requests_all_fail_exits_non_zero_and_the_pipeline_does_not_mark_it_done(servers, prompts_file,  # noqa: F811
                                                                                            tmp_path):
    gen, judge = servers
    gen.reset(lambda call: Fault(status=503))
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=4)
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"root": str(tmp_path / "root"), "stages": {"aif": {"recipe": str(recipe)}}}))
    env = {**os.environ, KEY_ENV: "k"}
    proc = subprocess.run([sys.executable, "-m", "zephyr.cli", "run", str(pipeline)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    # every request fails: the first one, asked alone, stops the stage with the server's words
    assert (f"zephyr: error: solver at {gen.base_url}: HTTP 503: fake 503 (after 3 attempts): the first request "
            "failed, so the stage stops") in proc.stdout
    assert gen.count() == 3  # that one request and its two retries, not 12 x 3
    assert f"zephyr run: stage aif failed with exit code 2; full log: {tmp_path / 'aif' / 'stage.log'}" in proc.stderr
    assert not (tmp_path / "aif" / "zephyr_stage.json").exists()
    assert not (tmp_path / "aif" / "data").exists()

    gen.reset()  # the server recovers: the same command completes the stage
    proc = subprocess.run([sys.executable, "-m", "zephyr.cli", "run", str(pipeline)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "aif" / "zephyr_stage.json").is_file() and len(dataset_rows(tmp_path / "aif")) == 4


def test_aif_with_failures_left_exits_3_with_counts_and_the_first_message(servers, prompts_file, tmp_path,  # noqa: F811
                                                                          monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "k")
    gen, judge = servers
    answered: set[str] = set()

    def fault(call):  # each model answers its first request, then fails
        if call.model not in answered:
            answered.add(call.model)
            return None
        return Fault(status=503)

    gen.reset(fault)
    assert cli.main(["aif", str(aif_recipe(tmp_path, gen, judge, prompts_file, n=4))]) == 3
    err = capsys.readouterr().err  # 12 answers + 1 judgment (the one prompt with two answers) asked for
    assert ("zephyr: incomplete: AIF completions and judgments: 10 of 13 missing (76.9%; failures: 10 generation: "
            "HTTP 503; first: generation") in err and "fake 503 (after 3 attempts)" in err
    assert "Rerun the same command to retry them" in err
    assert json.loads((tmp_path / "aif" / "summary.json").read_text())["missing"] == 10


def test_max_failure_rate_lets_a_run_finish_with_some_failures_and_says_so(servers, prompts_file, tmp_path,  # noqa: F811
                                                                         monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "k")
    gen, judge = servers
    one = prompt_list(prompts_file)[5]["prompt"]  # not the first request (a failing first one stops the stage)
    gen.reset(lambda call: Fault(status=503) if call.prompt == one and call.model == "solver" else None)
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=10, max_failure_rate=0.05)
    assert cli.main(["aif", str(recipe)]) == 0
    out = capsys.readouterr().out  # 10 prompts x 3 answers + 10 judgments asked for; one answer failed
    assert "1 of 40 missing (2.5%; failures: 1 generation: HTTP 503; first: generation" in out
    assert "within max_failure_rate 0.05" in out
    assert json.loads((tmp_path / "aif" / "summary.json").read_text())["missing"] == 1


# 3. ----------------------------------------------------------------------------------- the server's words, fail fast
def test_a_request_the_server_rejects_stops_the_stage_at_once_with_the_servers_message(servers, prompts_file,  # noqa: F811
                                                                                       tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "k")
    gen, judge = servers
    gen.reset(lambda call: Fault(status=404))  # e.g. a model name the server does not serve
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=24)
    assert cli.main(["aif", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"zephyr: error: solver at {gen.base_url}: HTTP 404: fake 404" in err
    assert gen.count() <= 4  # at most the requests already in flight (concurrency 4), not one per prompt
    assert judge.count() == 0


def test_a_refused_connection_stops_after_its_short_probe(servers, prompts_file, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv(KEY_ENV, "k")
    gen, judge = servers
    url = gen.base_url
    gen.stop()
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=24)
    assert cli.main(["aif", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"zephyr: error: solver at {url}: connection error" in err and "(after 3 attempts)" in err
    failures = read_jsonl(tmp_path / "aif" / "failures.jsonl")
    assert len(failures) <= 4  # the requests in flight, not all 24


# 4. ----------------------------------------------------------------------------------- sampling a server ignores
def test_extra_body_reaches_the_server_and_identical_samples_are_flagged(servers, prompts_file, tmp_path,  # noqa: F811
                                                                         monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "k")
    gen, judge = servers
    gen.reset(lambda call: Fault(content="always the same") if call.model == "guesser" else None)
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=4)
    cfg = yaml.safe_load(recipe.read_text())
    cfg["generators"][1]["extra_body"] = {"top_k": 5, "repetition_penalty": 1.1}
    recipe.write_text(yaml.safe_dump(cfg))
    cli.main(["aif", str(recipe)])
    bodies = [c.body for c in gen.select(model="guesser")]
    assert bodies and all(b["top_k"] == 5 and b["repetition_penalty"] == 1.1 for b in bodies)
    assert all("top_k" not in c.body for c in gen.select(model="solver"))
    out = capsys.readouterr().out
    assert "generator guesser: all 2 samples are identical for 4 of 4 prompts at temperature 0.8" in out
    assert "ignores the sampling settings" in out


# 5. ----------------------------------------------------------------------------------- no pairs: old data kept
def test_a_rejudge_that_makes_no_pairs_is_an_error_and_keeps_the_dataset(servers, prompts_file, tmp_path,  # noqa: F811
                                                                         monkeypatch, capsys):
    monkeypatch.setenv(KEY_ENV, "k")
    gen, judge = servers
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=4)
    assert cli.main(["aif", str(recipe)]) == 0
    data = tmp_path / "aif" / "data"
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    same = "".join(f"### Answer {i}\nInstruction following: 3\nHonesty: 3\nTruthfulness: 3\nHelpfulness: 3\n"
                   for i in (1, 2, 3))
    judge.reset(lambda call: Fault(content=same))  # every answer rated the same: with ties dropped, no pair
    assert cli.main(["aif", str(recipe), "--judge.seed", "5", "--binarization.ties", "drop"]) == 2
    err = capsys.readouterr().err
    assert "no preference pair could be made from 4 prompts (4 tie)" in err and "previous dataset" in err
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_one_answer_per_prompt_is_an_error_that_says_why(servers, prompts_file, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv(KEY_ENV, "k")
    gen, judge = servers
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=3)
    cfg = yaml.safe_load(recipe.read_text())
    cfg["generators"] = cfg["generators"][:1]
    recipe.write_text(yaml.safe_dump(cfg))
    assert cli.main(["aif", str(recipe)]) == 2
    assert "each prompt gets 1 answer in all: a pair needs two" in capsys.readouterr().err


# 6. ----------------------------------------------------------------------------------- keys
def test_missing_key_variable_is_one_line_and_a_pasted_key_is_refused_unseen(servers, prompts_file, tmp_path,  # noqa: F811
                                                                            monkeypatch, capsys):
    gen, judge = servers
    monkeypatch.delenv(KEY_ENV, raising=False)
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=2)
    assert cli.main(["aif", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"zephyr: error: api_key_env: environment variable {KEY_ENV} is not set "
                                            f"(it must hold the API key for {gen.base_url})")
    monkeypatch.setenv(KEY_ENV, "")
    assert cli.main(["aif", str(recipe)]) == 2
    assert f"environment variable {KEY_ENV} is empty" in capsys.readouterr().err

    pasted = "sk-proj-AbC123dEf456GhI789jKl"
    assert cli.main(["aif", str(recipe), f"--judge.api_key_env={pasted}"]) == 2
    captured = capsys.readouterr()
    assert "api_key_env must be the NAME of an environment variable" in captured.err
    assert pasted not in captured.out + captured.err
    assert gen.count() == judge.count() == 0


# 7. ----------------------------------------------------------------------------------- the key is the model served
def test_another_port_or_a_trailing_slash_reuses_answers_and_answers_are_stripped(servers, prompts_file, tmp_path,  # noqa: F811
                                                                                  monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    gen, judge = servers
    gen.reset(lambda call: Fault(content=f"  {solve(call.prompt)}\n\n") if call.model == "solver" else None)
    recipe = aif_recipe(tmp_path, gen, judge, prompts_file, n=4)
    assert cli.main(["aif", str(recipe)]) == 0
    stored = read_jsonl(tmp_path / "aif" / "completions.jsonl")
    assert {r["response"] for r in stored if r["model"] == "solver"} == {
        solve(p["prompt"]) for p in prompt_list(prompts_file)[:4]}  # stripped like the local backends' answers
    with FakeOpenAI() as moved:
        cfg = yaml.safe_load(recipe.read_text())
        for g in cfg["generators"]:
            g["base_url"] = moved.base_url + "/"
        recipe.write_text(yaml.safe_dump(cfg))
        assert cli.main(["aif", str(recipe)]) == 0
        assert moved.count() == 0  # the same models: nothing asked again
