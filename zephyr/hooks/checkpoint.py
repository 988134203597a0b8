"""transformers' checkpoint saving: where a checkpoint is written, the save itself, and its upload to the Hub.

transformers writes `checkpoint-N` in place and uploads it from there (push_to_hub with hub_strategy every_save,
checkpoint or all_checkpoints). Zephyr writes it in a staging folder and publishes it with one rename
(zephyr/checkpointing.py, zephyr/stages/reliability.py), so it must choose the folder, wrap the save, and upload
only the published folder. A callback cannot: `on_save` runs after the save and the upload have started.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from zephyr.hooks.registry import private_override


class CheckpointHooks:
    """Put before the TRL trainer class in the bases (ReliableTrainerMixin does)."""

    checkpoint_staging_root: str | None = None  # while a checkpoint is being staged: the folder it goes under

    def save_checkpoint_staged(self, run_dir: str, save: Callable[[], None]) -> None:
        """Run transformers' save (`save`) of a checkpoint of `run_dir`; zephyr stages and publishes it."""
        save()

    @private_override("transformers.Trainer", why=(
        "_save_checkpoint writes into `_get_output_dir(trial)/checkpoint-N`; this is the only way to make it "
        "write into the staging folder."))
    def _get_output_dir(self, trial):
        return self.checkpoint_staging_root or super()._get_output_dir(trial)

    @private_override("transformers.Trainer", why=(
        "Every checkpoint save of the training loop (steps, epochs, a stop) goes through it; there is no public "
        "hook before or around the save, only on_save after it."))
    def _save_checkpoint(self, model, trial):
        run_dir = super()._get_output_dir(trial)  # the real one, not the staging folder
        self.save_checkpoint_staged(run_dir, functools.partial(super()._save_checkpoint, model, trial))

    @private_override("transformers.Trainer", why=(
        "_save_checkpoint uploads the checkpoint from the folder it just wrote, i.e. the staging folder (which "
        "is renamed away while the background upload reads it). Skipped there; called again on the published "
        "folder by push_checkpoint."))
    def _push_from_checkpoint(self, checkpoint_folder):
        if self.checkpoint_staging_root is None:
            super()._push_from_checkpoint(checkpoint_folder)

    def push_checkpoint(self, folder: str) -> None:
        """Upload the published checkpoint `folder` the way transformers would have (hub_strategy says what)."""
        self._push_from_checkpoint(folder)
