"""DeepSpeed and bitsandbytes only in the stage processes that use them.

Both are imported by the libraries whenever they are installed, used or not:
- accelerate's `extract_model_from_parallel`, which TRL and transformers call on every model, imports deepspeed to
  test `isinstance(model, DeepSpeedEngine)`: about 1.5 CPU-s of every stage start, and DeepSpeed's "Setting
  accelerator to CPU" notice.
- peft, which TRL imports, imports bitsandbytes, whose default backend wraps its kernels in `torch.compile` at
  import and so loads torch's compiler stack: about 1 CPU-s of every stage start.
A stage start is a fifth of a short tiny run and most of a test's time, so a stage process that does not need one
of them marks it absent before the libraries load it: a None entry in `sys.modules` makes `import x` raise
ImportError and `importlib.util.find_spec` return None, which is how accelerate, transformers, TRL and peft test
whether it is installed (pinned in tests/test_cli.py), so they take their paths for a machine without it.

The test is what the stage is given: its command line and the recipe files that names. Where that cannot rule a
library out (a hub model that is not in the local cache may be a pre-quantized checkpoint), it stays.
ZEPHYR_IMPORT_ALL=1 keeps both, whatever the recipe says.
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


def read_argument(arg: str) -> str | None:
    """The text of a file named on the command line, or None when `arg` names no readable file."""
    try:
        return Path(arg).read_text(errors="ignore") if Path(arg).is_file() else None
    except OSError:  # not a path (too long, say), or unreadable
        return None


def deepspeed_requested(argv: list[str]) -> bool:
    """A DeepSpeed launch (`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED), or any mention
    of deepspeed in the arguments or in a file they name (a recipe's `deepspeed: ds_config.json`, say)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("true", "1"):
        return True
    return any("deepspeed" in (read_argument(arg) or arg).lower() for arg in argv)


def recipe_items(argv: list[str]) -> Iterator[tuple[str, Any]]:
    """(key, value) of every setting the command line gives: its overrides, and each named YAML file's keys at every
    depth (a list item's key is its list's). A file that is not YAML yields its text under the key ''."""
    for i, arg in enumerate(argv):
        text = read_argument(arg)
        if text is not None:
            try:
                yield from nested_items("", yaml.safe_load(text))
            except yaml.YAMLError:
                yield "", text
        elif arg.startswith("--") and "=" not in arg:  # `--key value` or a bare `--flag`
            following = argv[i + 1] if i + 1 < len(argv) else ""
            yield arg[2:], "true" if not following or following.startswith("--") or "=" in following else following
        else:  # `key=value`, `--key=value`, or a value already read with its `--key`
            key, _, value = arg.lstrip("-").rpartition("=")
            yield key, value


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


def bitsandbytes_requested(argv: list[str]) -> bool:
    """A 4-bit or 8-bit load, a bitsandbytes optimizer, or a model that may be saved quantized, anywhere in the
    command line or the recipe files it names. The hub cache holds `main`: a model pinned to another revision is
    not looked up there."""
    items = list(recipe_items(argv))
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


def leave_out_unused_libraries(argv: list[str]) -> None:
    """Mark deepspeed and bitsandbytes absent for this stage process unless it uses them (or they are loaded)."""
    if os.environ.get("ZEPHYR_IMPORT_ALL", "").lower() in ("1", "true"):
        return
    unused = [name for name, requested in (("deepspeed", deepspeed_requested), ("bitsandbytes", bitsandbytes_requested))
              if name not in sys.modules and not requested(argv)]
    for name in unused:
        sys.modules[name] = None
    if unused:
        logger.info("not loading %s: this run does not use %s (ZEPHYR_IMPORT_ALL=1 loads them)",
                    " or ".join(unused), "them" if len(unused) > 1 else "it")
