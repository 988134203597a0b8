"""A scriptable OpenAI-compatible chat server for the AIF tests (stdlib only, 127.0.0.1, port 0).

It plays the generators (it answers the embedded task prompts: the model `solver` at temperature 0 gives the
exact answer, everything else a near miss drawn from the request's seed) and the LLM judge (UltraFeedback
rubric text rating each shown answer by whether it is exactly right). Every request is recorded; a `fault`
hook can turn any request into an HTTP error, a slow answer, a garbled body or other judge text.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from zephyr.embedded.tasks import solve

CORRECT = {"instruction_following": 5, "honesty": "N/A", "truthfulness": 5, "helpfulness": 5}  # mean_aspects 5.0
WRONG = {"instruction_following": 2, "honesty": 3, "truthfulness": 1, "helpfulness": 2}  # mean_aspects 2.0


@dataclass
class Call:
    """One HTTP request as the server saw it."""

    kind: str  # "generate", "judge" or "critique"
    model: str
    prompt: str  # the user message (generate) or the instruction being judged (judge, critique)
    seed: int | None
    temperature: float | None
    max_tokens: int | None
    authorization: str | None
    answers: list[str] = field(default_factory=list)  # judge: the answers in the order shown
    nth: int = 1  # how many requests of this kind/model/prompt the server has seen, this one included
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    """What to do instead of a normal answer: an HTTP status, a delay, a raw body, or other content."""

    status: int | None = None
    sleep: float = 0.0
    raw: bytes | None = None
    content: str | None = None


def generator_answer(model: str, prompt: str, temperature: float, seed: int) -> str:
    """`solver` at temperature 0 answers right; anything else gives a near miss chosen by the seed."""
    right = solve(prompt)
    if right is None:
        return "I am not sure what you mean."
    if model == "solver" and temperature == 0:
        return right
    misses = [right[:-1] or "?", right + "!", right.swapcase(), f"{right} {seed % 97}"]
    return random.Random(seed).choice([m for m in misses if m != right])


def rationale(answer: str) -> str:
    return f"rated the answer {answer!r}"


def judge_text(instruction: str, answers: list[str]) -> str:
    """Rubric text for the shown answers (the rationale quotes the answer, so tests can check the mapping)."""
    expected = solve(instruction)
    blocks = []
    for number, answer in enumerate(answers, 1):
        ratings = CORRECT if answer == expected else WRONG
        lines = [f"### Answer {number}"]
        for aspect, value in ratings.items():
            lines += [f"{aspect.replace('_', ' ').capitalize()}: {value}", f"Rationale: {rationale(answer)}"]
        blocks.append("\n".join(lines))
    return "Here are my ratings.\n\n" + "\n\n".join(blocks) + "\n"


def parse_judge_prompt(user: str) -> tuple[str, list[str]]:
    """The instruction and the answers, in the order shown, of a rubric request."""
    instruction = re.search(r"Instruction:\n(.*?)\n\n\d+ answers follow", user, flags=re.DOTALL)[1]
    instruction = instruction.split("which the answers reply to:)\n")[-1]  # a later turn: rate the reply to it
    blocks = re.findall(r"<answer (\d+)>\n(.*?)\n</answer \1>", user, flags=re.DOTALL)
    assert [int(n) for n, _ in blocks] == list(range(1, len(blocks) + 1)), blocks
    return instruction, [text for _, text in blocks]


class FakeOpenAI:
    """`with FakeOpenAI() as server:` ... `server.base_url` is http://127.0.0.1:PORT/v1."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.fault: Callable[[Call], Fault | None] | None = None
        self._seen: Counter = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                try:
                    server._handle(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -------------------------------------------------------------------------------------------- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self, fault: Callable[[Call], Fault | None] | None = None) -> None:
        """Forget the requests seen so far and install a new fault hook (None: behave)."""
        with self._lock:
            self.calls.clear()
            self._seen.clear()
            self.fault = fault

    # -------------------------------------------------------------------------------------------- queries
    def select(self, kind: str | None = None, model: str | None = None, prompt: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if (kind is None or c.kind == kind) and (model is None or c.model == model)
                    and (prompt is None or c.prompt == prompt)]

    def count(self, kind: str | None = None, model: str | None = None, prompt: str | None = None) -> int:
        return len(self.select(kind, model, prompt))

    # -------------------------------------------------------------------------------------------- serving
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length))
        if h.path != "/v1/chat/completions":
            self._send(h, 404, b'{"error": "not found"}')
            return
        messages = body["messages"]
        user = [m["content"] for m in messages if m["role"] == "user"][-1]
        answers: list[str] = []
        if "<answer 1>" in user:
            kind = "judge"
            prompt, answers = parse_judge_prompt(user)
        elif "Overall score" in user:
            kind, prompt = "critique", re.search(r"Instruction:\n(.*?)\n\nAnswer:", user, flags=re.DOTALL)[1]
        else:
            kind, prompt = "generate", user
        with self._lock:
            self._seen[(kind, body.get("model"), prompt)] += 1
            call = Call(kind, body.get("model"), prompt, body.get("seed"), body.get("temperature"),
                        body.get("max_tokens"), h.headers.get("Authorization"), answers,
                        self._seen[(kind, body.get("model"), prompt)], body)
            self.calls.append(call)
            fault = self.fault(call) if self.fault else None
        fault = fault or Fault()
        if fault.sleep:
            time.sleep(fault.sleep)
        if fault.status:
            self._send(h, fault.status, json.dumps({"error": {"message": f"fake {fault.status}"}}).encode())
            return
        if fault.raw is not None:
            self._send(h, 200, fault.raw)
            return
        if fault.content is not None:
            content = fault.content
        elif kind == "judge":
            content = judge_text(prompt, answers)
        elif kind == "critique":
            content = "Critique: fine.\nOverall score: 7"
        else:
            content = generator_answer(call.model, prompt, call.temperature or 0.0, call.seed or 0)
        payload = {"id": "chatcmpl-fake", "object": "chat.completion", "model": call.model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop"}]}
        self._send(h, 200, json.dumps(payload).encode())

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()


def shortest_judge(prompt: str, responses: list[str]) -> list[float]:
    """A callable judge that prefers short answers (reward = minus the length)."""
    return [-float(len(r)) for r in responses]
