"""The list of every private name of transformers and TRL that zephyr overrides, calls, patches or writes.

A library may rename or drop a private name in any release, and nothing errors: an override that is no longer
called simply stops working. So each one is declared here, where it is used, with why the public API is not
enough; `tests/test_hooks.py` checks every entry against the installed libraries (the name exists, its
parameters are the ones zephyr relies on, a short real run reaches it) and names the hook that broke.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

Kind = Literal["override", "patch", "attribute"]


@dataclass(frozen=True)
class PrivateHook:
    owner: str  # where the library defines the name: "transformers.Trainer", "trl.trainer.dpo_trainer"
    name: str  # the private name itself
    kind: Kind  # override: a zephyr method replaces it; patch: swapped while zephyr runs; attribute: written
    params: tuple[str, ...] | None  # the parameters zephyr relies on (None: not a function)
    why: str  # why the public API is not enough

    @property
    def key(self) -> str:
        return f"{self.owner}.{self.name}"

    @property
    def library(self) -> str:
        return self.owner.split(".")[0]

    def resolve_owner(self) -> Any:
        """The class or module named by `owner`."""
        try:
            return importlib.import_module(self.owner)
        except ModuleNotFoundError:
            module, _, attr = self.owner.rpartition(".")
            return getattr(importlib.import_module(module), attr)


HOOKS: dict[str, PrivateHook] = {}
_calls: Counter[str] | None = None  # set while `recording()` runs (tests only)


def declare(hook: PrivateHook) -> PrivateHook:
    HOOKS[hook.key] = hook
    return hook


def used(hook: PrivateHook) -> None:
    """Note that `hook` was reached (counted only while `recording()` runs)."""
    if _calls is not None:
        _calls[hook.key] += 1


def private_override(owner: str, why: str) -> Callable[[F], F]:
    """Declare the decorated method as zephyr's override of `owner`'s private method of the same name (and
    parameters), and count its calls while `recording()` runs."""

    def declare_override(method: F) -> F:
        hook = declare(PrivateHook(owner, method.__name__, "override",
                                   tuple(inspect.signature(method).parameters), why))

        @functools.wraps(method)
        def counted(*args: Any, **kwargs: Any) -> Any:
            used(hook)
            return method(*args, **kwargs)

        return counted  # type: ignore[return-value]

    return declare_override


@contextmanager
def recording() -> Iterator[Counter[str]]:
    """Count how often each hook is reached inside the block: hook key -> calls."""
    global _calls
    previous, _calls = _calls, Counter()
    try:
        yield _calls
    finally:
        _calls = previous
