"""Where chat completions come from: a local transformers model, vLLM, or an OpenAI-compatible endpoint.

Each backend answers a list of chat requests in order; a request that fails after its retries comes back as a
result with `failure` set (never an exception that loses the rest of the batch).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from zephyr.inference.settings import EndpointSettings

logger = logging.getLogger(__name__)


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int | None = None  # openai backend: this request's own seed (default: the batch seed + its position)


@dataclass
class ChatResult:
    text: str | None
    failure: str | None = None


class TransformersBackend:
    """Batched, left-padded generation with a local model."""

    def __init__(self, settings: EndpointSettings) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from zephyr.configs import ModelArguments
        from zephyr.modeling import load_tokenizer, resolve_dtype

        self.torch = torch
        self.tokenizer = load_tokenizer(ModelArguments(model_name_or_path=settings.model,
                                                       trust_remote_code=settings.trust_remote_code))
        self.tokenizer.padding_side = "left"  # generation continues each row from its last real token
        self.model = AutoModelForCausalLM.from_pretrained(
            settings.model, dtype=resolve_dtype(settings.dtype), trust_remote_code=settings.trust_remote_code
        ).eval()
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.batch_size = settings.batch_size

    def complete(self, requests: list[ChatRequest], seed: int = 0) -> list[ChatResult]:
        results = []
        for start in range(0, len(requests), self.batch_size):
            results += self._batch(requests[start : start + self.batch_size], seed + start)
        return results

    def _batch(self, requests: list[ChatRequest], seed: int) -> list[ChatResult]:
        torch, tok = self.torch, self.tokenizer
        first = requests[0]
        if any((r.temperature, r.top_p, r.max_new_tokens) != (first.temperature, first.top_p, first.max_new_tokens)
               for r in requests):
            raise ValueError("one batch must share its sampling settings")
        texts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests]
        # The chat template already wrote BOS: the tokenizer must not add a second one.
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=first.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                **(sampling if first.temperature > 0 else {"do_sample": False}),
            )
        new = out[:, enc["input_ids"].shape[1]:]
        return [ChatResult(tok.decode(row, skip_special_tokens=True).strip()) for row in new]


class VLLMBackend:
    """vLLM in this process, on GPU machines where vLLM is installed beside zephyr. vLLM pins its own torch and
    transformers (0.33 needs transformers<5.21, below zephyr's range), so zephyr has no `vllm` extra: most users run
    `vllm serve` in its own environment and use `backend: openai` against it."""

    def __init__(self, settings: EndpointSettings) -> None:
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError("backend vllm needs vLLM importable here; its pins usually conflict with zephyr's, so run "
                              "`vllm serve MODEL` in its own environment and use backend: openai with its base_url") from err
        self.llm = LLM(model=settings.model, dtype=settings.dtype, trust_remote_code=settings.trust_remote_code,
                       tensor_parallel_size=settings.tensor_parallel_size)

    def complete(self, requests: list[ChatRequest], seed: int = 0) -> list[ChatResult]:
        from vllm import SamplingParams

        params = [SamplingParams(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens,
                                 seed=seed + i) for i, r in enumerate(requests)]
        outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [ChatResult(o.outputs[0].text.strip()) for o in outputs]


class RetryableError(Exception):
    """Worth another try: a timeout, a dropped connection, a 5xx/408/429, or a garbled response."""


class PermanentError(Exception):
    """Asking again will not help (a 4xx such as a bad key or an unknown model)."""


class EndpointError(RuntimeError):
    """The endpoint cannot serve this stage at all (it refuses connections, rejects the key, does not know the
    model): the stage stops at the first such answer, with the server's own message, instead of failing every
    request one by one."""


def server_message(body: bytes) -> str:
    """The error text a server sent: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the raw text."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
        error = data.get("error") if isinstance(data, dict) else None
        text = str((error.get("message") if isinstance(error, dict) else error) or data.get("detail") or data.get(
            "message") or text)
    except (ValueError, AttributeError):
        pass
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


class OpenAIBackend:
    """Any OpenAI-compatible /chat/completions endpoint, with concurrency, timeouts and retries.

    The API key is read from the environment variable named by `api_key_env` at call time and only ever put in
    the Authorization header: it is not stored on this object, logged, or written anywhere. A transport failure
    is retried with backoff and then reported as that request's failure; an answer that asking again cannot
    change (a 4xx other than 408/429, or a server that refuses connections through all retries) stops the
    stage with EndpointError, and so does a first request that fails through all its retries.
    """

    def __init__(self, settings: EndpointSettings) -> None:
        if not settings.base_url:
            raise ValueError("backend openai needs base_url (e.g. http://127.0.0.1:8000/v1)")
        if settings.api_key_env and not os.environ.get(settings.api_key_env):
            state = "is empty" if settings.api_key_env in os.environ else "is not set"
            raise EndpointError(f"api_key_env: environment variable {settings.api_key_env} {state} (it must hold "
                                f"the API key for {settings.base_url})")
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self.fatal: str | None = None  # set by the first answer that no retry can change
        self.probed = False  # whether a first request has succeeded

    def complete(self, requests: list[ChatRequest], seed: int = 0) -> list[ChatResult]:
        ask = lambda ir: self._one(ir[1], seed + ir[0] if ir[1].seed is None else ir[1].seed)  # noqa: E731
        results: list[ChatResult] = []
        if not self.probed and requests:
            # The first request goes alone: if it fails through all its retries (a server that is down, a model
            # name it does not serve, a wrong URL), nothing says the others would fare better.
            results.append(ask((0, requests[0])))
            self.probed = results[0].failure is None
            if not self.probed:
                self.fatal = self.fatal or f"{results[0].failure}: the first request failed, so the stage stops"
        if not self.fatal:
            with ThreadPoolExecutor(max_workers=max(1, self.settings.concurrency)) as pool:
                results += list(pool.map(ask, list(enumerate(requests))[len(results):]))
        if self.fatal:
            raise EndpointError(f"{self.settings.model} at {self.settings.base_url}: {self.fatal}")
        return results

    def _one(self, request: ChatRequest, seed: int) -> ChatResult:
        s = self.settings
        body = json.dumps({
            "model": s.model, "messages": request.messages, "temperature": request.temperature,
            "top_p": request.top_p, "max_tokens": request.max_new_tokens, "seed": seed, **(s.extra_body or {}),
        }).encode()
        last, refused = "no attempt", False
        for attempt in range(s.max_retries + 1):
            if self.fatal:  # another request already found the endpoint unusable: do not ask
                return ChatResult(None, failure=self.fatal)
            if attempt:
                time.sleep(s.retry_backoff * 2 ** (attempt - 1))
            try:
                return ChatResult(self._post(body).strip())
            except PermanentError as err:
                self.fatal = str(err)
                return ChatResult(None, failure=str(err))
            except RetryableError as err:
                last, refused = str(err), "refused" in str(err).lower()
                logger.debug("request failed (attempt %d of %d): %s", attempt + 1, s.max_retries + 1, last)
        if refused:  # nothing listens there: every other request would wait through the same retries
            self.fatal = f"{last} (after {s.max_retries + 1} attempts): is the server running?"
        return ChatResult(None, failure=f"{last} (after {s.max_retries + 1} attempts)")

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key_env:
            headers["Authorization"] = f"Bearer {os.environ[self.settings.api_key_env]}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.settings.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = server_message(err.read() or b"")
            message = f"HTTP {err.code}" + (f": {detail}" if detail else "")
            if err.code in (408, 429) or err.code >= 500:
                raise RetryableError(message) from None
            raise PermanentError(message) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            kind = "timeout" if "timed out" in str(reason) else "connection error"
            raise RetryableError(f"{kind}: {reason}") from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise RetryableError("invalid response (not an OpenAI chat completion)") from None
        if not isinstance(content, str) or not content.strip():
            raise RetryableError("empty answer")  # from a server, most often a cut-off or overloaded request
        return content


BACKENDS = {"transformers": TransformersBackend, "vllm": VLLMBackend, "openai": OpenAIBackend}


def make_backend(settings: EndpointSettings):
    return BACKENDS[settings.backend](settings)
