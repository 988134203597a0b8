"""Checks of the machine a training stage is about to run on, made before anything is loaded or written.

These are not recipe checks: `zephyr run --dry-run` on a login node without a GPU, flash-attn or network must
still pass a recipe meant for the GPU nodes. They run when the stage starts, so that a recipe this machine
cannot honour is one clear error, not a traceback after minutes of loading or (push_to_hub) after training.
"""

from __future__ import annotations

import importlib.util
import os
import socket
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
