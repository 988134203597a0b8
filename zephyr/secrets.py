"""Which recipe keys hold credentials: they never reach saved configs, command lines, logs or dashboards."""

from __future__ import annotations


def is_secret_key(name: str) -> bool:
    """Fields that may hold credentials (hub_token, *_api_key, ...); eos_token and pad_token are not."""
    name = name.lower()
    return name in ("token", "hub_token") or name.endswith(("_api_key", "api_key", "password", "secret"))
