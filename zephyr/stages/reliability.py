"""What keeps a long training run safe to stop and to resume, shared by the dSFT and dDPO trainers.

- Stop on request: SIGTERM/SIGINT during training set a flag; at every optimizer step the ranks agree on it (one
  tiny all-reduce), then all of them finish the step, save a checkpoint and stop, and the stage exits non-zero
  saying how to resume. (transformers' own `enable_jit_checkpoint` is SIGTERM-only, lets each rank act on its own
  signal, so signalling one rank deadlocks the others, and lets the stage go on to save a final model.)
- Non-finite guard: a nan/inf loss or gradient norm stops training before the optimizer step that would use it,
  on every rank at the same step, keeping the last good checkpoint.
- Atomic checkpoints: written under _tmp-checkpoint-N and published as checkpoint-N once every rank is done
  (zephyr/checkpointing.py); a save that fails (full disk) removes its half-written folder and says so. With
  push_to_hub, only the published checkpoint is uploaded.
- Exact resume: length-grouped batches are shuffled from (seed, epoch) instead of the global RNG, and the
  trainers' cumulative token count continues from the checkpoint.

The private names of transformers and TRL this needs are reached only through zephyr/hooks/ (CheckpointHooks,
TrainerHooks), which declares and tests them.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from zephyr import checkpointing
from zephyr.hooks import CheckpointHooks, TrainerHooks

logger = logging.getLogger("zephyr")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(SystemExit):
    """Training cannot or must not go on. A SystemExit: the process ends with `code` after the message (which
    train_stage prints), not with a traceback, and no caller (the pipeline) takes it for an error to step over."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TrainingInterrupted(TrainingStopped):
    """SIGTERM/SIGINT: a checkpoint was saved; exit code 128 + signal number, as a shell reports a signal."""


class NonFiniteError(TrainingStopped):
    """The loss or the gradient norm became nan/inf."""


class CheckpointSaveError(TrainingStopped):
    """A checkpoint could not be written (a full disk, most often)."""


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def agree(values: list[float] | torch.Tensor, device: torch.device | str) -> list[float]:
    """The element-wise maximum over all ranks (the values themselves with one process): every rank acts on it."""
    tensor = torch.as_tensor(values).to(device=device, dtype=torch.float32)
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def _not_finite(value: Any, device: torch.device | str) -> torch.Tensor:
    """1.0 when `value` (a tensor, DTensor, float or None) is nan/inf, else 0.0; stays on the device (no sync)."""
    if value is None:
        return torch.zeros((), device=device)
    if hasattr(value, "full_tensor"):  # a DTensor grad norm (FSDP2)
        value = value.full_tensor()
    tensor = torch.as_tensor(value, dtype=torch.float32).to(device)
    return (~torch.isfinite(tensor)).any().float()


class StepGuard(TrainerCallback):
    """Once per optimizer step, after the gradients are synchronised and before the optimizer uses them
    (`on_pre_optimizer_step`), all ranks agree on: a stop signal received by any of them, a non-finite loss, a
    non-finite gradient norm. The trainer feeds it the losses and the grad norm (ReliableTrainerMixin)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        # fp16 loss scaling makes inf gradients on purpose (the scaler then skips the step): check the loss only
        self.check_grads = not trainer.args.fp16
        self.received = 0  # signal number seen by this process
        self.stop_signal = 0  # agreed by all ranks: finish this step, save, stop
        self.saved_step = -1
        self._loss: torch.Tensor | None = None
        self._grad_norm: Any = None
        self.run_loss_sum: torch.Tensor | None = None  # this process's step losses since it started, summed
        self.prior_loss_sum, self.prior_steps = 0.0, 0  # the whole run's, up to the checkpoint resumed from

    # -- fed by the trainer ------------------------------------------------------------------------------
    def observe_loss(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float()
        self._loss = loss if self._loss is None else self._loss + loss

    def observe_grad_norm(self, grad_norm: Any) -> None:
        self._grad_norm = grad_norm

    # -- signals -----------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.received:
            logger.warning("%s: already stopping at the end of this step (kill -9 stops without saving)", name)
            return
        self.received = signum
        logger.warning("%s received: training stops at the end of this step, after saving a checkpoint", name)

    @contextmanager
    def catching_signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT only set a flag while training (signal handlers can only be set from the main thread)."""
        self.received = self.stop_signal = 0
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- callback events ---------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        # TRL's token count starts at 0 in every process: continue the count of the resumed run
        tokens = [h["num_tokens"] for h in state.log_history if "num_tokens" in h]
        if state.global_step and tokens:
            self.trainer.continue_token_count(int(tokens[-1]))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        device = args.device
        flags = torch.stack([_not_finite(self._loss, device),
                             _not_finite(self._grad_norm, device) if self.check_grads else torch.zeros((), device=device),
                             torch.tensor(float(self.received), device=device)])
        loss, grad_norm = self._loss, self._grad_norm
        self._loss = self._grad_norm = None
        if loss is not None:  # on the device: no sync here
            self.run_loss_sum = loss if self.run_loss_sum is None else self.run_loss_sum + loss
        loss_bad, grad_bad, signum = agree(flags, device)  # the one sync point per step
        step = state.global_step + 1
        if loss_bad or grad_bad:
            quantity, value = ("loss", loss) if loss_bad else ("gradient norm", grad_norm)
            shown = f"{float(value):g}" if value is not None and not math.isfinite(float(value)) else "nan/inf"
            where = "" if world_size() == 1 else " on at least one process"
            # DeepSpeed steps its optimizer inside backward(), before this hook: the weights in memory are
            # already affected there, only the checkpoints are not
            taken = ("DeepSpeed had already applied this step in memory; the checkpoints do not have it."
                     if self.trainer.is_deepspeed_enabled else
                     "The optimizer step was not taken, so no weights were updated with it.")
            logger.info("rank %d of %d: stopping at step %d: the %s is not finite", args.process_index, world_size(),
                        step, quantity)
            raise NonFiniteError(
                f"training stopped at step {step}: the {quantity} is {shown}{where}. {taken} "
                f"{self.trainer.checkpoint_note()} Lower the learning rate, check the data, or use fp32/bf16 "
                "instead of fp16; then rerun the same command to resume from there.")
        if signum and not self.stop_signal:
            self.stop_signal = int(signum)
            logger.info("rank %d of %d: stop requested (%s), stopping after step %d", args.process_index,
                        world_size(), signal.Signals(self.stop_signal).name, step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_signal:
            control.should_save = True
            control.should_training_stop = True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stop_signal:  # stopping mid-epoch: no epoch-end evaluation, and no second save of the same step
            control.should_evaluate = False
            if self.saved_step == state.global_step:
                control.should_save = False

    def on_save(self, args, state, control, **kwargs):
        self.saved_step = state.global_step
        if self.stop_signal and state.global_step < state.max_steps:
            # Stopping early: at the end of training transformers would still load the best checkpoint and, with
            # save_total_limit=1, delete every other one, this one included. Keep it: it is the one to resume from.
            state.best_model_checkpoint = None


    def whole_run_loss_sum(self, device: torch.device | str) -> float:
        """The sum of every step's loss since the run began (resumes included), averaged over the processes as the
        Trainer's logged losses are. A collective: every rank calls it."""
        local = torch.zeros((), device=device) if self.run_loss_sum is None else self.run_loss_sum.to(device)
        if world_size() > 1:
            local = local.clone()
            dist.all_reduce(local, op=dist.ReduceOp.SUM)
            local = local / world_size()
        return self.prior_loss_sum + float(local)


LOSS_FILE = "zephyr_train_loss.json"  # in each checkpoint: the sum of the step losses up to it


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler shuffles with the global torch RNG when an epoch starts. A resumed run
    starts its epoch before it restores the checkpoint's RNG state, so it would group the rows differently from
    the run it continues. Shuffled from (seed, epoch) instead, like accelerate's SeedableRandomSampler: the same
    order in every run and on every rank."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls it (through accelerate) before every epoch
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


def data_seed(args: Any) -> int:
    return args.data_seed if args.data_seed is not None else args.seed


class ReliableTrainerMixin(CheckpointHooks, TrainerHooks):
    """Put before the TRL trainer class: `class T(ReliableTrainerMixin, SFTTrainer)`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step_guard = StepGuard(self)
        self.add_callback(self.step_guard)

    def train(self, *args: Any, **kwargs: Any):
        """Training with SIGTERM/SIGINT turned into a stop at the next step boundary; raises TrainingInterrupted
        once the checkpoint is saved, so the caller does not go on as if training had finished."""
        resumed = kwargs.get("resume_from_checkpoint")
        self.loss_sum_known = True
        if isinstance(resumed, str):  # the loss sum up to the checkpoint (a checkpoint of zephyr's has it)
            saved = Path(resumed) / LOSS_FILE
            self.loss_sum_known = saved.is_file()
            if self.loss_sum_known:
                record = json.loads(saved.read_text())
                self.step_guard.prior_loss_sum, self.step_guard.prior_steps = record["loss_sum"], record["steps"]
        with self.step_guard.catching_signals():
            output = super().train(*args, **kwargs)
        guard = self.step_guard
        if self._interrupted():
            name = signal.Signals(guard.stop_signal).name
            raise TrainingInterrupted(
                f"training stopped by {name} at step {self.state.global_step}; checkpoint saved to "
                f"{self._last_checkpoint()}. Rerun the same command to resume from it.", 128 + guard.stop_signal)
        if guard.received:
            logger.warning("%s arrived during the last step: finishing the stage", signal.Signals(guard.received).name)
        return output

    def whole_run_train_loss(self) -> float | None:
        """The mean step loss over the whole run, resumes included (the Trainer's `train_loss` averages only the
        steps of the last process). None when a resumed checkpoint did not record its sum. Every rank calls it."""
        total = self.step_guard.whole_run_loss_sum(self.args.device)
        steps = self.state.global_step
        return total / steps if steps and self.loss_sum_known else None

    loss_sum_known = True  # False after resuming from a checkpoint that did not record its loss sum

    def _interrupted(self) -> bool:
        return bool(self.step_guard.stop_signal) and self.state.global_step < self.state.max_steps

    # What feeds the guard: the loss of every micro-batch and the grad norm before the optimizer step.
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.step_guard.observe_loss(loss)
        return loss

    def observe_grad_norm(self, grad_norm: Any) -> None:
        self.step_guard.observe_grad_norm(grad_norm)

    def train_sampler(self, train_dataset, default):
        sampler = default(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            return SeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, data_seed(self.args))
        return sampler

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        # set_epoch reaches a sampler at most two wrappers deep; a resumed multi-process run adds a third
        # (skip_first_batches), so the resumed epoch would be shuffled as epoch 0. accelerate registers its own
        # seedable sampler with set_sampler for this reason: do the same for ours.
        batches = getattr(loader, "batch_sampler", None)
        sampler = getattr(getattr(batches, "batch_sampler", batches), "sampler", None)
        if isinstance(sampler, SeededLengthGroupedSampler) and hasattr(loader, "set_sampler"):
            loader.set_sampler(sampler)
        return loader

    def _last_checkpoint(self) -> Path | None:
        return checkpointing.last_complete_checkpoint(self.args.output_dir)

    def checkpoint_note(self) -> str:
        last = self._last_checkpoint()
        return f"The last checkpoint, {last}, is intact." if last else "No checkpoint had been saved yet."

    def save_checkpoint_staged(self, run_dir: str, save: Callable[[], None]) -> None:
        """Atomic checkpoints: transformers' save (`save`) writes into the staging folder (CheckpointHooks), which
        is published as checkpoint-N once every rank is done with its part, and only then uploaded."""
        step = self.state.global_step
        final = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        staging = checkpointing.staging_dir(run_dir, step)
        loss_sum = self.step_guard.whole_run_loss_sum(self.args.device)  # a collective: before any rank branches
        error: Exception | None = None
        self.checkpoint_staging_root = str(staging)
        try:
            save()
        except Exception as err:  # noqa: BLE001 - every rank must learn of a failure before anyone publishes
            error = err
        finally:
            self.checkpoint_staging_root = None
        (failed,) = agree([float(error is not None)], self.args.device)
        if failed:
            self._save_failed(error, final, staging, run_dir)
        staged = staging / final.name
        if self.args.should_save and staged.is_dir():  # (with save_on_each_node on a shared disk, once)
            (staged / LOSS_FILE).write_text(json.dumps({"loss_sum": loss_sum, "steps": step}))
            if self.state.best_model_checkpoint == str(staged):  # the best is this one: record where it will live
                self.state.best_model_checkpoint = str(final)
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
            checkpointing.write_manifest(staged, step)
            checkpointing.publish(staged, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        if self.args.push_to_hub:  # from the published folder (transformers' own push was skipped while staging)
            self.push_checkpoint(str(final))
        self.accelerator.wait_for_everyone()  # nobody reads or resumes before the rename

    def _save_failed(self, error: Exception | None, final: Path, staging: Path, run_dir: str) -> None:
        full = error is not None and checkpointing.is_disk_full(error, run_dir)
        if error is not None:  # a full disk is the machine's state, not a bug: one line, no traceback
            logger.error("saving %s failed: %s", final, error, exc_info=None if full else error)
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # frees the space the partial save took
        what = "the disk is full" if full else (f"{type(error).__name__}: {error}" if error else "another rank failed")
        raise CheckpointSaveError(
            f"could not save checkpoint {final} at step {self.state.global_step}: {what}. "
            f"{self.checkpoint_note()} {'Free some space, then r' if full else 'R'}erun the same command to resume.",
        ) from error
