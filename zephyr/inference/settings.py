"""How to reach a model and what identifies its answers: the settings shared by AIF's generators and judge
and by evaluation's models and grader. Nested YAML sections map onto these dataclasses."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Backend = Literal["transformers", "vllm", "openai"]


@dataclass(frozen=True)
class Capabilities:
    """What a backend is, as the planner and the stages need to know it (one place, not a check per caller)."""

    local: bool  # it loads the model in this process: more GPUs, more workers, more speed
    independent_requests: bool  # each request stands alone (a server): ask only for what is not stored yet
    tensor_parallel: bool  # one worker may span several GPUs (tensor_parallel_size)


CAPABILITIES: dict[str, Capabilities] = {
    "transformers": Capabilities(local=True, independent_requests=False, tensor_parallel=False),
    "vllm": Capabilities(local=True, independent_requests=False, tensor_parallel=True),
    "openai": Capabilities(local=False, independent_requests=True, tensor_parallel=False),
}

# Settings that change how requests travel, not what comes back: excluded from the settings hashes. The
# base_url too: the same model served on another port (or behind a trailing slash) gives the same answers.
TRANSPORT_KEYS = ("batch_size", "concurrency", "timeout", "max_retries", "retry_backoff", "api_key_env", "base_url")

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
KEY_PREFIXES = ("sk-", "hf_", "ghp_", "gsk_", "xai-", "AIza", "key-", "Bearer ")


def looks_like_a_key(value: str) -> bool:
    """A credential pasted where the NAME of its environment variable belongs."""
    if value.startswith(KEY_PREFIXES) or not ENV_NAME.fullmatch(value):
        return True
    # long, mixed letters and digits, no underscore: a token, not a variable name such as OPENAI_API_KEY
    return len(value) >= 24 and "_" not in value and any(c.isdigit() for c in value) and any(
        c.islower() for c in value)


@dataclass
class EndpointSettings:
    """How to reach a model: shared by generators and the LLM judge."""

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES[self.backend]

    @property
    def gpus(self) -> int:
        """GPUs one worker serving this model needs."""
        return self.tensor_parallel_size if self.capabilities.tensor_parallel else 1

    backend: Backend = field(default="transformers", metadata={"help": "transformers, vllm or openai."})
    model: str = field(default="", metadata={"help": "Local folder / hub id, or the endpoint's model name."})
    base_url: str | None = field(
        default=None, metadata={"help": "openai backend: the server's base URL, e.g. http://127.0.0.1:8000/v1"}
    )
    api_key_env: str | None = field(
        default=None,
        metadata={"help": "openai backend: NAME of the environment variable that holds the API key (never the key)."},
    )
    batch_size: int = field(default=16, metadata={"help": "Prompts per forward batch (local backends)."})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once (openai backend)."})
    timeout: float = field(default=60.0, metadata={"help": "Seconds before one request is abandoned."})
    max_retries: int = field(default=3, metadata={"help": "Retries of a failed request, with exponential backoff."})
    retry_backoff: float = field(default=0.5, metadata={"help": "Seconds before the first retry; doubles each time."})
    dtype: str = field(default="auto", metadata={"help": "Weights dtype for local backends."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run custom model code (off by default)."})
    tensor_parallel_size: int = field(
        default=1,
        metadata={"help": "vllm backend: GPUs one model is split across. Under `zephyr run`, a stage with G visible "
                  "GPUs runs G / tensor_parallel_size workers side by side (data parallel)."},
    )
    extra_body: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "openai backend: extra fields for every request body, for server-specific settings "
                  "(e.g. vLLM's {top_k: 50, repetition_penalty: 1.1})."},
    )

    def __post_init__(self) -> None:
        if self.api_key_env is not None and looks_like_a_key(self.api_key_env):
            # Said without the value: it is probably the key itself, and errors end up in logs.
            raise ValueError("api_key_env must be the NAME of an environment variable holding the key (e.g. "
                             "OPENAI_API_KEY), and the value given looks like a key itself (not shown here). "
                             "Put the key in an environment variable and give its name")


@dataclass
class GeneratorConfig(EndpointSettings):
    name: str = field(default="", metadata={"help": "Short unique name of this generator (recorded per answer)."})
    num_completions: int = field(default=1, metadata={"help": "Answers per prompt from this generator."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 means greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling."})
    max_new_tokens: int = field(default=512, metadata={"help": "Longest answer."})
    principles: list[str] = field(
        default_factory=list,
        metadata={"help": "System prompts ('principles'); one is drawn per completion, as in UltraFeedback."},
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed (each batch is seeded from it and its place)."})

    def settings_hash(self) -> str:
        """Changes when anything that changes the answers changes (not batch size, concurrency, timeouts)."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in TRANSPORT_KEYS + ("name",)}
        return stable_hash({**keep, "model": model_fingerprint(self.model)})


@dataclass
class JudgeConfig(EndpointSettings):
    type: Literal["llm", "reward_model", "callable"] = field(
        default="llm", metadata={"help": "llm (UltraFeedback rubric), reward_model, or callable (module:function)."}
    )
    callable: str | None = field(
        default=None,
        metadata={"help": "For type callable: 'module:function' taking (prompt, responses) and returning one score "
                  "(float) or one dict {ratings, overall, reward, rationales} per response."},
    )
    aspects: list[str] = field(
        default_factory=lambda: ["instruction_following", "honesty", "truthfulness", "helpfulness"],
        metadata={"help": "UltraFeedback aspects rated 1-5 (honesty may be N/A)."},
    )
    overall_score: bool = field(default=False, metadata={"help": "Also ask for the 1-10 critique score."})
    temperature: float = field(default=0.0, metadata={"help": "Judge sampling temperature (UltraFeedback: 0)."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest judge output."})
    max_parse_retries: int = field(default=3, metadata={"help": "Re-asks when the judge's output cannot be parsed."})
    seed: int = field(default=0, metadata={"help": "Seed of the shuffled answer order."})

    def settings_hash(self) -> str:
        keep = {k: v for k, v in asdict(self).items()
                if k not in TRANSPORT_KEYS}
        return stable_hash({**keep, "model": model_fingerprint(self.model)})


def require_unique_names(section: str, names: list[str]) -> None:
    """Names key the stored records: they must exist and differ."""
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{section} need unique, non-empty names, got {names}")


def stable_hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def model_fingerprint(model: str) -> str:
    """What identifies a model's answers. A local folder is identified by its files' contents, not its path: a
    dSFT model retrained in place (`zephyr run --from sft`) must not be served the answers stored for its old
    weights, while the same weights moved elsewhere keep them. Hub ids and endpoint names stand for themselves."""
    folder = Path(model)
    if not model or not folder.is_dir():
        return model
    files = sorted(p for p in folder.iterdir() if p.is_file() and shapes_answers(p.name))
    return _folder_digest(str(folder), tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def shapes_answers(name: str) -> bool:
    """Weights, configs, tokenizer and chat template; not the run's logs, metrics or markers beside them."""
    return (name.endswith((".safetensors", "config.json", ".model", ".jinja"))
            or name.startswith(("tokenizer", "pytorch_model", "adapter_model", "special_tokens", "chat_template")))


@functools.cache
def _folder_digest(folder: str, stamps: tuple) -> str:
    """sha256 over the folder's files (read once per process and file state: ~10 s for a 7B model)."""
    digest = hashlib.sha256()
    for name, _, _ in stamps:
        digest.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:16]
