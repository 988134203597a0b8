"""Patches of library internals. Each hook says why the public API is not enough; `tests/test_hooks.py` pins the
internals they rely on (and the private TRL methods zephyr's trainers override), so an upgrade fails loudly there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import xxhash


def fast_module_hash(module: torch.nn.Module) -> str:
    """Identity of a model's weights for the reference log-prob cache key: xxh3-128 over every tensor's raw bytes,
    with its name, dtype and shape.

    TRL's `hash_module` SHA-256es every weight after widening bf16 to fp32 on the CPU: measured on an H200, several
    seconds of a 1B model's dDPO start-up (and ~7x that for a 7B model, on every rank). A cache key needs no
    cryptographic strength, only no accidental collisions, which a 128-bit hash of the same bytes gives at
    memory speed."""
    h = xxhash.xxh3_128()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            h.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return h.hexdigest()


@contextlib.contextmanager
def trl_reference_hash(hash_fn=None) -> Iterator[None]:
    """While a DPOTrainer is built, make it key its precomputed reference log-probs with `hash_fn`.

    Internal: `trl.trainer.dpo_trainer.hash_module`, called in `DPOTrainer.__init__` (TRL 1.16) and read by
    nothing else; the key only names a cache file, so swapping the hash changes no result."""
    from trl.trainer import dpo_trainer

    original = dpo_trainer.hash_module
    dpo_trainer.hash_module = hash_fn or fast_module_hash
    try:
        yield
    finally:
        dpo_trainer.hash_module = original
