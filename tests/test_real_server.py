"""AIF and eval against a real OpenAI-compatible server nobody on the team wrote: `transformers serve`
(transformers[serving], in the dev extra) on 127.0.0.1, serving the tiny model; stopped mid-run and restarted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_aif_backends import prompts_file  # noqa: F401  (24 task prompts with ids, as jsonl)

from zephyr import cli

SERVE = shutil.which("transformers", path=str(Path(sys.executable).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`transformers serve --host 127.0.0.1 --port P`, started and stopped by the test."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log

    def __enter__(self) -> Serve:
        self.proc = subprocess.Popen([SERVE, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return self
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                assert time.time() < deadline, "transformers serve did not come up"
                time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def endpoint(url: str, model: Path, **kw) -> dict:
    return {"backend": "openai", "base_url": url, "model": str(model.resolve()), "timeout": 60.0, "max_retries": 1,
            "retry_backoff": 0.1, "concurrency": 1, "max_new_tokens": 12, **kw}


@pytest.mark.slow
@pytest.mark.skipif(SERVE is None, reason="the transformers CLI is part of transformers itself")
def test_aif_and_eval_on_transformers_serve_survive_a_server_restart(tiny_dir, prompts_file, tmp_path, capsys):  # noqa: F811
    prompts = tmp_path / "prompts.jsonl"  # the first 6
    prompts.write_text("".join(prompts_file.read_text().splitlines(keepends=True)[:6]))
    model = tiny_dir / "model"
    port, log = free_port(), tmp_path / "serve.log"
    aif_cfg = {"prompts": {"id": str(prompts)},
               "generators": [{"name": "a", **endpoint("URL", model), "temperature": 0.0},
                              {"name": "b", **endpoint("URL", model), "temperature": 0.0,
                               "principles": ["Answer in one word."]}],
               "judge": {"type": "callable", "callable": "zephyr.embedded.tasks:judge"},
               "binarization": {"score": "reward", "rejected": "random", "ties": "keep"},
               "output_dir": str(tmp_path / "aif")}

    def write(cfg: dict, url: str, name: str) -> Path:
        text = yaml.safe_dump(cfg).replace("URL", url)
        path = tmp_path / name
        path.write_text(text)
        return path

    with Serve(port, log) as server:
        recipe = write(aif_cfg, server.base_url, "aif.yaml")
        assert cli.main(["aif", str(recipe), "--generators.1.model=/no/such/model"]) == 2
        err = capsys.readouterr().err  # transformers serve answers an unknown model with a bare HTTP 500: asked
        assert "zephyr: error: /no/such/model at " in err  # once (and retried), not for every prompt
        assert "HTTP 500: Internal Server Error (after 2 attempts): the first request failed, so the stage stops" in err
        assert cli.main(["aif", str(recipe)]) == 0
        # The served model as the LLM judge: a tiny model writes no rubric, so every judgment is a recorded
        # failure (exit 3), never a rating; the stored answers are not asked for again.
        llm = write({**aif_cfg, "output_dir": str(tmp_path / "aif"), "judge": {
            "type": "llm", **endpoint(server.base_url, model), "max_new_tokens": 24, "max_parse_retries": 0}},
            server.base_url, "aif_llm.yaml")
        assert cli.main(["aif", str(llm)]) == 3
        assert "6 of 18 missing" in capsys.readouterr().err and "unparsable judge output" in (
            tmp_path / "aif" / "failures.jsonl").read_text()
        assert (tmp_path / "aif" / "summary.json").read_text().count('"completions_new": 0') == 1
    completions = (tmp_path / "aif" / "completions.jsonl").read_text().splitlines()
    assert len(completions) == 12 and all(json.loads(x)["response"] == json.loads(x)["response"].strip()
                                          for x in completions)

    # The server is down: the stage stops at once (refused connection), and nothing is stored as an answer.
    eval_cfg = {"questions": str(tmp_path / "questions.jsonl"),
                "models": [{"name": "base", **endpoint("URL", model), "temperature": 0.0},
                           {"name": "again", **endpoint("URL", model), "temperature": 0.0, "seed": 1}],
                "judge": {"type": "callable", "callable": "zephyr.embedded.tasks:judge"},
                "mode": "both", "baseline": "base", "bootstrap_samples": 50, "output_dir": str(tmp_path / "eval")}
    (tmp_path / "questions.jsonl").write_text("".join(
        json.dumps({"question_id": json.loads(x)["prompt_id"], "turns": [json.loads(x)["prompt"]]}) + "\n"
        for x in prompts.read_text().splitlines()))
    down = write(eval_cfg, f"http://127.0.0.1:{port}/v1", "eval.yaml")
    assert cli.main(["eval", str(down)]) == 2
    assert "connection error" in capsys.readouterr().err
    assert not any((tmp_path / "eval").glob("eval_records.*.jsonl")) or not any(
        "answer" in line for f in (tmp_path / "eval").glob("eval_records.*.jsonl") for line in f.read_text().splitlines())

    # Back up on another port: AIF reuses every stored answer (base_url is not part of its key); eval completes.
    with Serve(free_port(), log) as server:
        recipe = write(aif_cfg, server.base_url + "/", "aif.yaml")
        before = (tmp_path / "aif" / "completions.jsonl").read_bytes()
        assert cli.main(["aif", str(recipe)]) == 0
        assert (tmp_path / "aif" / "completions.jsonl").read_bytes() == before
        assert cli.main(["eval", str(write(eval_cfg, server.base_url, "eval.yaml"))]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["missing"]["results"] == 0
    assert {m: e["missing_questions"] for m, e in results["models"].items()} == {"base": 0, "again": 0}
    # greedy decoding: the same model answers the same, so the pairwise comparison is all ties
    assert results["models"]["again"]["win_rate_vs_baseline"]["mean"] == 0.5
