"""TRL's precomputed reference log-probs: how zephyr keys, locks and accounts for their on-disk cache.

TRL 1.16 caches the reference pass of `precompute_ref_log_probs` in a file named after (the tokenized dataset's
fingerprint, a hash of the reference weights). Zephyr replaces both parts: the fingerprint by a key of everything
that shapes the pass (`reference_pass_settings`), the weights hash by a fast one (`fast_module_hash`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import xxhash
from datasets import Dataset

from zephyr.hooks.registry import PrivateHook, declare, private_override, used

HASH_MODULE = declare(PrivateHook(
    "trl.trainer.dpo_trainer", "hash_module", "patch", ("module",),
    "TRL keys its reference cache with this module-level function (called once in DPOTrainer.__init__) and "
    "takes no hash function as an argument; its SHA-256 of every weight widened to fp32 costs seconds per "
    "billion parameters (fast_module_hash)."))
KTO_HASH_MODULE = declare(PrivateHook(
    "trl.trainer.kto_trainer", "hash_module", "patch", ("module",),
    "KTOTrainer.__init__ keys its cache of precomputed reference log-probs the same way, with its own import of "
    "the function (fast_module_hash)."))
HASH_HOOKS = {"dpo_trainer": HASH_MODULE, "kto_trainer": KTO_HASH_MODULE}


ATTN_IMPLEMENTATION = declare(PrivateHook(
    "transformers.PretrainedConfig", "_attn_implementation", "attribute", None,
    "The attention kernel a loaded model runs (eager, sdpa, flash_attention_2...) changes its log-probs in the "
    "last bits; the config's to_dict() leaves it out and no public getter exists (TRL reads it the same way)."))


def attn_implementation(config: Any) -> str | None:
    """The attention kernel a loaded model runs."""
    used(ATTN_IMPLEMENTATION)
    return getattr(config, ATTN_IMPLEMENTATION.name, None)


def model_identity(config: Any) -> dict[str, Any]:
    """What a model config says about the forward pass: its to_dict() without where it was loaded from, and the
    attention implementation it runs."""
    settings = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    return {**settings, "attn_implementation": attn_implementation(config)}


def fast_module_hash(module: torch.nn.Module) -> str:
    """Identity of a model's weights for the reference log-prob cache key: xxh3-128 over every parameter's and
    buffer's raw bytes, with its name, dtype and full shape.

    Under DeepSpeed ZeRO-3 (`zero3_init_flag`) each rank holds a shard and every parameter reads as shape (0,): a
    hash of that would be the same for any weights. Such parameters are gathered one at a time (a collective: every
    rank hashes, as TRL calls this on every rank) and hashed whole, so the key sees the weights themselves.

    TRL's `hash_module` SHA-256es every weight after widening bf16 to fp32 on the CPU: measured on an H200, several
    seconds of a 1B model's dDPO start-up (and ~7x that for a 7B model, on every rank). A cache key needs no
    cryptographic strength, only no accidental collisions, which a 128-bit hash of the same bytes gives at
    memory speed."""
    h = xxhash.xxh3_128()
    tensors = dict(module.named_buffers())
    tensors.update(module.named_parameters(remove_duplicate=False))
    for name, tensor in sorted(tensors.items()):
        with _gathered(tensor):
            flat = tensor.detach().contiguous().cpu()
            h.update(f"{name}|{flat.dtype}|{tuple(flat.shape)}|".encode())
            if flat.numel():
                h.update(flat.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return h.hexdigest()


def _gathered(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """A ZeRO-3 parameter whole for the block (read-only); anything else as it is."""
    if not hasattr(tensor, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed  # loaded already: the parameter is DeepSpeed's

    return deepspeed.zero.GatheredParameters([tensor], modifier_rank=None)


@contextlib.contextmanager
def trl_reference_hash(hash_fn: Callable[[torch.nn.Module], str] | None = None,
                       trainer: str = "dpo_trainer") -> Iterator[None]:
    """While a DPOTrainer (or, with trainer="kto_trainer", a KTOTrainer) is built, make it key its precomputed
    reference log-probs with `hash_fn`.

    `trl.trainer.<trainer>.hash_module` is called in the trainer's `__init__` (TRL 1.16) and read by nothing else;
    the key only names a cache file, so swapping the hash changes no result."""
    hook = HASH_HOOKS[trainer]
    module = importlib.import_module(hook.owner)
    chosen = hash_fn or fast_module_hash

    def counted(weights: torch.nn.Module) -> str:
        used(hook)
        return chosen(weights)

    original = module.hash_module
    module.hash_module = counted
    try:
        yield
    finally:
        module.hash_module = original


# Fields of the DPO config (TrainingArguments + DPOConfig + ZephyrDPOConfig) known NOT to change the reference
# log-probs of TRL 1.16's precompute pass. Every other field, including any a new library version adds, is part of
# the cache key: an unknown field costs at worst one recomputation, a wrongly listed one silently reuses wrong
# log-probs. Checked against `DPOTrainer._precompute_ref_logps` and `compute_ref_log_probs`, which read only the
# collator (max_length, truncation_mode, pad_to_multiple_of), ld_alpha, the autocast precision and the model.
REFERENCE_NEUTRAL_FIELDS = frozenset({
    # where and how the run reports, saves and evaluates
    "output_dir", "run_name", "project", "report_to", "disable_tqdm", "skip_memory_metrics",
    "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "include_num_input_tokens_seen",
    "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
    "restore_callback_states_from_checkpoint", "resume_from_checkpoint", "resume",
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push",
    "hub_revision", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
    "do_train", "do_eval", "do_predict", "eval_strategy", "eval_steps", "eval_delay", "eval_on_start",
    "eval_accumulation_steps", "eval_do_concat_batches", "eval_use_gather_object", "batch_eval_metrics",
    "prediction_loss_only", "include_for_metrics", "metric_for_best_model", "greater_is_better",
    "load_best_model_at_end",
    # the policy's optimization: the reference pass runs before it, on frozen weights
    "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "optim",
    "optim_args", "optim_target_modules", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps",
    "num_train_epochs", "max_steps", "gradient_accumulation_steps", "average_tokens_across_devices",
    "label_smoothing_factor", "neftune_noise_alpha",
    # the DPO loss: applied to the log-probs after they are computed
    "beta", "label_smoothing", "loss_weights", "f_divergence_type", "f_alpha_divergence_coef", "discopop_tau",
    "use_weighting", "router_aux_loss_coef",
    # reference syncing: TRL refuses it together with precomputed log-probs
    "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps",
    # seeds and training order: the pass is deterministic (no dropout in eval mode) and reads rows in order
    "seed", "data_seed", "train_sampling_strategy", "length_column_name",
    # batch sizes: the one the pass uses is a key part of its own (`batch_size`)
    "per_device_train_batch_size", "per_device_eval_batch_size", "precompute_ref_batch_size",
    "auto_find_batch_size",
    # data loading and process-group plumbing: the same rows in the same order, the same maths
    "dataloader_drop_last", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "dataloader_in_order", "dataset_num_proc",
    "local_rank", "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters", "ddp_bucket_cap_mb",
    "ddp_broadcast_buffers", "ddp_static_graph",
    # memory savers of the training step: TRL turns checkpointing off for the reference pass
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "activation_checkpointing",
    "activation_checkpointing_kwargs", "activation_offloading", "torch_empty_cache_steps",
})


def _plain(value: Any) -> Any:
    """A JSON-able form of a config value (enums by value, nested configs as dicts)."""
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)  # an object without a stable form: at worst a cache miss


def reference_pass_settings(args: Any) -> dict[str, Any]:
    """Every field of the training config that may shape the reference pass: all but REFERENCE_NEUTRAL_FIELDS."""
    return {f.name: _plain(getattr(args, f.name)) for f in dataclasses.fields(args)
            if f.name not in REFERENCE_NEUTRAL_FIELDS}


PRECOMPUTE_ENGINES = {trainer: declare(PrivateHook(
    f"trl.{trainer}", "_precompute_engine", "attribute", None,
    "Under ZeRO-3 with no reference model TRL runs the reference pass through a DeepSpeed inference engine built "
    "around the policy itself and keeps it, hooks and all, for later passes; no public call releases it "
    "(release_precompute_engine)")) for trainer in ("DPOTrainer", "KTOTrainer")}


def release_precompute_engine(trainer: Any, owner: str) -> None:
    """Remove the hooks of TRL's reference-pass engine once a pass is done (TRL 1.16 builds a new one if another
    pass needs it).

    Why: accelerate then wraps the same module again for training, so two ZeRO-3 parameter coordinators trace
    every forward. The second registration renumbers the modules' `ds_id`; a stale coordinator that recorded
    exactly one forward (a reference pass of one batch per rank: a small dataset, a one-batch epoch) then pops an
    empty deque at the first training step (`partitioned_param_coordinator.record_parameters`: IndexError), and
    one that recorded more re-traces every training step for nothing."""
    hook = PRECOMPUTE_ENGINES[owner]
    used(hook)
    engine = getattr(trainer, hook.name, None)
    if engine is not None:
        engine.destroy()  # DeepSpeed: removes the engine's module hooks
        setattr(trainer, hook.name, None)


class KTOReferencePassHooks:
    """KTOTrainer's reference pass, with its ZeRO-3 engine released after each pass (release_precompute_engine)."""

    @private_override("trl.KTOTrainer", why=(
        "TRL runs the reference pass here, from __init__ and evaluate(), and keeps the ZeRO-3 engine it built for "
        "it; no public hook runs after the pass."))
    def _precompute_ref_logps(self, dataset, name, batch_size):
        try:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        finally:
            release_precompute_engine(self, "KTOTrainer")


class ReferencePassHooks:
    """TRL's DPOTrainer entry points for the reference cache. Put before DPOTrainer in the bases; the trainer
    implements `precompute_reference` (zephyr/stages/dpo.py)."""

    reference_weights_hash: str | None = None  # the hash TRL keys its cache with, as zephyr computed it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        def record(module: torch.nn.Module) -> str:
            self.reference_weights_hash = fast_module_hash(module)
            return self.reference_weights_hash

        with trl_reference_hash(record):
            super().__init__(*args, **kwargs)

    @private_override("trl.DPOTrainer", why=(
        "TRL runs, caches and reloads the reference pass here, called from __init__ and evaluate(); there is no "
        "public way to key, lock or time that cache, nor to release the ZeRO-3 engine it keeps for the pass."))
    def _precompute_ref_logps(self, dataset, name, batch_size):
        try:
            return self.precompute_reference(dataset, name, batch_size, super()._precompute_ref_logps)
        finally:
            release_precompute_engine(self, "DPOTrainer")

    def precompute_reference(self, dataset: Dataset, name: str, batch_size: int,
                             trl_precompute: Callable[[Dataset, str, int], Dataset]) -> Dataset:
        return trl_precompute(dataset, name, batch_size)
