"""Logging, set up in one place. Every command calls `configure_logging` when it starts; importing zephyr
configures nothing (no handlers, levels or warning filters change until a command runs)."""

from __future__ import annotations

import logging
import sys
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Library messages no user can act on, silenced when a command starts:
# - bitsandbytes, imported by peft on every command (transformers' Trainer imports peft), warns that an optional
#   CPU 4-bit kernel is missing, although the fallback it then uses works; most runs use no 4-bit at all.
QUIET_LOGGERS = {"bitsandbytes.backends.cpu.ops": logging.ERROR}
# - TRL's configs set `gradient_checkpointing`, which transformers 5 reports as a deprecated alias on every config.
# - TRL's KTO and DPO trainers ask `is_gradient_checkpointing`, which transformers 5 reports as deprecated too.
QUIET_WARNINGS = (r".*gradient_checkpointing` is deprecated.*", r".*is_gradient_checkpointing` is deprecated.*")


def configure_logging(level: int = logging.INFO, library_level: int | None = None) -> None:
    """Timestamped lines on stdout at `level` for zephyr; `library_level` (default: warnings only) for
    transformers and datasets, whose own handlers are pointed at the same format."""
    logging.basicConfig(format=FORMAT, datefmt="%H:%M:%S", stream=sys.stdout, level=level, force=True)
    logging.getLogger("zephyr").setLevel(level)
    for name, quiet_level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(quiet_level)
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if library_level is not None:
        import datasets
        import transformers

        datasets.utils.logging.set_verbosity(library_level)
        transformers.utils.logging.set_verbosity(library_level)
        transformers.utils.logging.enable_default_handler()
        transformers.utils.logging.enable_explicit_format()
