"""DeepSpeed, bitsandbytes and wandb only in the processes that use them.

The libraries import all three whenever they are installed, used or not:
- accelerate's `extract_model_from_parallel`, which TRL and transformers call on every model, imports deepspeed to
  test `isinstance(model, DeepSpeedEngine)`: about 1.5 CPU-s of every stage start, and DeepSpeed's "Setting
  accelerator to CPU" notice.
- peft, which TRL and transformers' trainer utilities import, imports bitsandbytes, whose default backend wraps its
  kernels in `torch.compile` at import and so loads torch's compiler stack: about 1 CPU-s.
- TRL's trainers import wandb to link a run in the model card: about 0.3 CPU-s.
Imports are most of a short stage's time (and of a test's), so a `zephyr` process that does not need one of them
marks it absent before the libraries load it: a None entry in `sys.modules` makes `import x` raise ImportError and
`importlib.util.find_spec` return None, which is how accelerate, transformers, TRL and peft test whether it is
installed (pinned in tests/test_cli.py), so they take their paths for a machine without it.

The test is what the process is given: its command line, the files that names, and the recipe files those name
(a pipeline's stage recipes, a sweep's base recipe). Where that cannot rule a library out (a hub model that is not
in the local cache may be a pre-quantized checkpoint), it stays. ZEPHYR_IMPORT_ALL=1 keeps all three.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

# In a key: a 4/8-bit load or its settings (load_in_4bit, bnb_4bit_quant_type, quantization_config). In a value: a
# bitsandbytes optimizer (adamw_bnb_8bit, paged_adamw_32bit, lion_8bit) or a pre-quantized model (...-bnb-4bit).
BITSANDBYTES_WORDS = ("4bit", "8bit", "bnb", "bitsandbytes", "paged_", "quantiz")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name; it may be a model, or a dataset
FALSE = {"", "false", "no", "off", "0", "none", "null", "~"}
MAX_READ = 1 << 20  # recipes, pipelines, sweeps and DeepSpeed configs are a few KiB
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")  # a value ending so names a file that is read too


def read_file(path: str) -> str | None:
    """The text of the file `path` names, or None when it names no readable file or one too large for a recipe or a
    config (a dataset file, say)."""
    try:
        file = Path(path)
        return file.read_text(errors="ignore") if file.is_file() and file.stat().st_size <= MAX_READ else None
    except OSError:  # not a path (too long, say), or unreadable
        return None


def read_request(argv: list[str]) -> tuple[list[str], list[tuple[str, Any]]]:
    """What a command is given: the texts of its arguments and of the files they name, YAML and JSON files named in
    those included; and (key, value) of every setting among them (a YAML file's keys at every depth, a list item's
    key being its list's; a file that is not YAML is only text)."""
    texts: list[str] = []
    items: list[tuple[str, Any]] = []
    seen: set[str] = set()

    def read(path: str, depth: int, folder: Path | None = None) -> bool:
        """Read `path` (or `folder / path`, a file named relative to the file naming it) and what it names."""
        for candidate in (path, str(folder / path) if folder else None):
            text = read_file(candidate) if candidate and candidate not in seen else None
            if text is not None:
                path = candidate
                break
        else:
            return False
        seen.add(path)
        texts.append(text)
        try:
            found = list(nested_items("", yaml.safe_load(text)))
        except yaml.YAMLError:
            return True
        items.extend(found)
        for _, value in found:
            if depth < 3 and isinstance(value, str) and value.endswith(CONFIG_SUFFIXES):
                read(value, depth + 1, Path(path).parent)
        return True

    for i, arg in enumerate(argv):
        if read(arg, 0):
            continue
        texts.append(arg)
        if arg.startswith("--") and "=" not in arg:  # `--key value` or a bare `--flag`
            following = argv[i + 1] if i + 1 < len(argv) else ""
            items.append((arg[2:], "true" if not following or following.startswith("--") or "=" in following
                          else following))
        else:  # `key=value`, `--key=value`, or a value already read with its `--key`
            key, _, value = arg.lstrip("-").rpartition("=")
            items.append((key, value))
            if value.endswith(CONFIG_SUFFIXES):
                read(value, 1)
    return texts, items


def deepspeed_requested(texts: list[str]) -> bool:
    """A DeepSpeed launch (`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED), or any mention
    of deepspeed (a recipe's `deepspeed: ds_config.json`, say)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("true", "1"):
        return True
    return any("deepspeed" in text.lower() for text in texts)


def wandb_requested(texts: list[str], items: list[tuple[str, Any]]) -> bool:
    """Any mention of wandb (`report_to: wandb`), or `report_to: all`, which logs to every dashboard installed."""
    return any("wandb" in text.lower() for text in texts) or any(
        key.endswith("report_to") and "all" in str(value).lower() for key, value in items)


def nested_items(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from nested_items(f"{key}.{k}" if key else str(k), v)
    elif isinstance(value, list):
        for v in value:
            yield from nested_items(key, v)
    else:
        yield key, value


def exists(path: str) -> bool:
    try:
        return Path(path).exists()
    except OSError:  # not a path (too long, say)
        return False


def model_may_be_quantized(name: str, look_in_cache: bool = True, depth: int = 0) -> bool:
    """Whether `name` may be a checkpoint saved quantized: a folder whose config.json has a quantization_config (or an
    adapter whose base model may be), a hub model whose cached config.json (of `main`) has one, or a hub name that is
    not in the cache or not looked up there."""
    folder = Path(name)
    try:
        if folder.is_dir():
            config = folder / "config.json"
            if config.is_file():
                return "quantization_config" in json.loads(config.read_text())
            adapter = folder / "adapter_config.json"
            base = json.loads(adapter.read_text()).get("base_model_name_or_path") if adapter.is_file() else None
            return bool(base) and (depth > 1 or model_may_be_quantized(str(base), look_in_cache, depth + 1))
        if folder.exists() or not HUB_NAME.fullmatch(name):
            return False
    except (OSError, ValueError, AttributeError):  # unreadable, or not JSON / not a JSON object: not ours to judge
        return True
    if not look_in_cache:
        return True
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
        if not isinstance(cached, str):  # not in the cache: unknown, so it may be quantized
            return True
        return "quantization_config" in json.loads(Path(cached).read_text())
    except (OSError, ValueError):  # an invalid repo name, an unreadable file
        return True


def bitsandbytes_requested(items: list[tuple[str, Any]]) -> bool:
    """A 4-bit or 8-bit load, a bitsandbytes optimizer, or a model that may be saved quantized, anywhere among the
    settings. The hub cache holds `main`: a model pinned to another revision is not looked up there."""
    pinned = any(key.endswith("revision") and str(value).lower() not in FALSE | {"main"} for key, value in items)
    for key, value in items:
        text = str(value).lower()
        if any(word in key.lower() for word in BITSANDBYTES_WORDS) and value is not False and value is not None \
                and text not in FALSE:
            return True
        if not isinstance(value, str):
            continue
        if not exists(value) and any(word in text for word in BITSANDBYTES_WORDS):  # a local folder: its config says
            return True
        if model_may_be_quantized(value, look_in_cache=not pinned):
            return True
    return False


def leave_out_unused_libraries(argv: list[str], orchestrator: bool = False) -> None:
    """Mark deepspeed, bitsandbytes and wandb absent for this process unless it uses them (or they are loaded).
    An orchestrator (`zephyr run`, `zephyr sweep`) starts its stages and trials as processes of their own and loads
    no model: bitsandbytes goes whatever it is given, and deepspeed stays, as checking a recipe that names a
    DeepSpeed config reads it with DeepSpeed's own code."""
    if os.environ.get("ZEPHYR_IMPORT_ALL", "").lower() in ("1", "true"):
        return
    texts, items = read_request(argv)
    requested = {"bitsandbytes": lambda: not orchestrator and bitsandbytes_requested(items),
                 "wandb": lambda: wandb_requested(texts, items)}
    if not orchestrator:
        requested["deepspeed"] = lambda: deepspeed_requested(texts)
    unused = [name for name, asked in requested.items() if name not in sys.modules and not asked()]
    for name in unused:
        sys.modules[name] = None
    if unused:
        logger.info("not loading %s: this run does not use %s (ZEPHYR_IMPORT_ALL=1 loads everything)",
                    ", ".join(sorted(unused)), "them" if len(unused) > 1 else "it")
