"""The classes zephyr runs from `trl.experimental` (TRL 1.16 keeps ORPO and CPO there), imported in one place.

Importing `trl.experimental` warns that its API may change without notice. The `zephyr orpo` and `zephyr simpo`
help says so already, and the warning would otherwise greet every run (and break the quiet `--help`), so it is
silenced for this import only. An upgrade that moves these classes fails here, by name."""

from __future__ import annotations

import warnings

from trl.import_utils import TRLExperimentalWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TRLExperimentalWarning)
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

__all__ = ["CPOConfig", "CPOTrainer", "ORPOConfig", "ORPOTrainer"]
