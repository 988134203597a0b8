"""Checks of the machine a training stage is about to run on, made before anything is loaded or written.

These are not recipe checks: `zephyr run --dry-run` on a login node without a GPU, flash-attn or network must
still pass a recipe meant for the GPU nodes. They run when the stage starts, so that a recipe this machine
cannot honour is one clear error, not a traceback after minutes of loading or (push_to_hub) after training.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zephyr.errors import RecipeError

# attn_implementation -> (the package it needs, the pip name)
FLASH_PACKAGES = {
    "flash_attention_2": ("flash_attn", "flash-attn"),
    "flash_attention_3": ("flash_attn_interface", "flash-attn-3 (FlashAttention 3, built from source)"),
    "flash_attention_4": ("flash_attn", "flash-attn (4.x)"),
}
TRUE = {"1", "true", "yes", "on"}


logger = logging.getLogger("zephyr")


def package_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_attention(name: str | None) -> None:
    """A flash attention implementation needs its package and a CUDA GPU; say so before the model loads."""
    if name not in FLASH_PACKAGES:
        return
    module, pip_name = FLASH_PACKAGES[name]
    if not package_installed(module):
        raise RecipeError(f"key 'attn_implementation': {name} needs the {module} package, which is not installed: "
                          f"set attn_implementation: sdpa, or pip install {pip_name}")
    if not cuda_available():
        raise RecipeError(f"key 'attn_implementation': {name} runs on CUDA GPUs only and this machine has none: set "
                          "attn_implementation: sdpa")


def hub_offline_reason() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here, or None when it can."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in TRUE:
            return f"{var}={os.environ[var]} is set (offline mode)"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    try:
        socket.create_connection((host, endpoint.port or 443), timeout=5).close()
    except OSError as err:
        return f"{host} cannot be reached ({err.strerror or type(err).__name__})"
    return None


def check_hub_push(training_args: Any) -> None:
    """push_to_hub uploads at every save and at the end: offline, or without a token, it fails only after
    training; refuse it now."""
    if not getattr(training_args, "push_to_hub", False):
        return
    reason = hub_offline_reason()
    if reason:
        raise RecipeError(f"key 'push_to_hub': true, but {reason}: set push_to_hub: false (the model is saved "
                          "in output_dir either way; `huggingface-cli upload` sends it later), or go online")
    from huggingface_hub import get_token

    if not (get_token() or os.environ.get("HF_TOKEN")):
        raise RecipeError("key 'push_to_hub': true, but no Hugging Face token is set: run `huggingface-cli login` "
                          "or set HF_TOKEN, or set push_to_hub: false")


def check_machine(model_args: Any, training_args: Any) -> None:
    """Everything a training stage checks about this machine before it loads anything."""
    check_attention(model_args.attn_implementation)
    check_hub_push(training_args)


def hub_ids(model_args: Any, data_args: Any | None = None) -> tuple[list[str], list[str]]:
    """The model and dataset names of a training recipe that are hub ids rather than local paths."""
    from zephyr.data.loading import looks_like_hub_id

    models = [name for name in (model_args.model_name_or_path, getattr(model_args, "tokenizer_name_or_path", None),
                                getattr(model_args, "ref_model_name_or_path", None))
              if name and not Path(name).expanduser().exists() and looks_like_hub_id(name)]
    data: list[str] = []
    if data_args is not None:
        names = [data_args.dataset_name] + [d.get("id") for d in (data_args.dataset_mixture or {}).get("datasets", [])
                                            if isinstance(d, dict)]
        data = [n for n in names if isinstance(n, str) and not Path(n).expanduser().exists() and looks_like_hub_id(n)]
    return models, data


def check_hub_reachable(model_args: Any, data_args: Any | None = None) -> None:
    """A model named by hub id and not in the local cache needs the Hub: probe it once (5 s) now rather than let
    the download retry for minutes before failing. A model in the cache loads without it."""
    models, data = hub_ids(model_args, data_args)
    if not models and not data:
        return
    from huggingface_hub import try_to_load_from_cache

    missing = [m for m in models if not isinstance(try_to_load_from_cache(m, "config.json",
                                                                          revision=model_args.model_revision), str)]
    if not missing and not data:
        return
    reason = hub_offline_reason()
    if reason is None:
        return
    if missing:
        raise RecipeError(f"model_name_or_path: {missing[0]} is a hub id that is not in this machine's cache, and "
                          f"{reason}. Download it where the Hub is reachable (`huggingface-cli download "
                          f"{missing[0]}`) and copy the cache here, or point model_name_or_path at a local folder")
    if not os.environ.get("HF_HUB_OFFLINE"):
        logger.warning("datasets %s are hub ids and %s: they load only from this machine's datasets cache; set "
                       "HF_HUB_OFFLINE=1 to skip the network retries, or point dataset_name at a local copy",
                       data, reason)


def precision_note(model_args: Any, training_args: Any) -> str | None:
    """What happens when the weights are loaded in half precision and no mixed precision is asked for: said
    before the run, since nothing else says it (a handbook recipe's `torch_dtype: bfloat16` with `bf16: false`)."""
    dtype = str(getattr(model_args, "dtype", None) or "")
    if dtype not in ("bfloat16", "float16") or training_args.bf16 or training_args.fp16:
        return None
    return (f"dtype {dtype} with bf16: false and fp16: false: the weights, their gradients and the optimizer's "
            f"updates are all {dtype} (no float32 master weights, no autocast), so small updates round away; "
            f"for mixed precision set dtype: float32 with bf16: true (on a GPU that has it), or dtype: float32 "
            "alone on CPU")
