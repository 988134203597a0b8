"""DeepSpeed only in the stage processes that use it.

accelerate's `extract_model_from_parallel`, which TRL and transformers call on every model, imports deepspeed
whenever it is installed, to test `isinstance(model, DeepSpeedEngine)`. Without DeepSpeed that import costs about
1.5 CPU-s of every stage start (a fifth of a short tiny run) and prints DeepSpeed's "Setting accelerator to CPU"
warning. So a stage process that is not a DeepSpeed run marks deepspeed absent before the libraries load it: a None
entry in `sys.modules` makes `import deepspeed` raise ImportError and `importlib.util.find_spec` return None, which
is how accelerate, transformers and TRL test whether it is installed (pinned in tests/test_cli.py), so they take
their paths for a machine without it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def deepspeed_requested(argv: list[str]) -> bool:
    """A DeepSpeed launch (`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED), or any mention
    of deepspeed in the arguments or in a file they name (a recipe's `deepspeed: ds_config.json`, say)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("true", "1"):
        return True
    for arg in argv:
        path = Path(arg)
        try:  # a file by what it says, not by its name
            text = path.read_text(errors="ignore") if path.is_file() else arg
        except OSError:  # not a path (too long, say), or unreadable
            text = arg
        if "deepspeed" in text.lower():
            return True
    return False


def leave_out_unused_deepspeed(argv: list[str]) -> None:
    """Mark deepspeed absent for this process unless it is a DeepSpeed run (or deepspeed is already loaded)."""
    if "deepspeed" not in sys.modules and not deepspeed_requested(argv):
        sys.modules["deepspeed"] = None
