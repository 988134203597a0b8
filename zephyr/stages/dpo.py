"""dDPO: direct preference optimization against the frozen dSFT model (TRL's DPOTrainer)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import transformers
import trl
from datasets import Dataset
from filelock import FileLock
from trl import DPOTrainer

from zephyr.configs import DataArguments, ModelArguments, ZephyrDPOConfig
from zephyr.data.cache import content_digest
from zephyr.hooks import (
    DPO_WEIGHTS,
    ReferencePassHooks,
    WeightedMetrics,
    attn_implementation,
    fast_lm_head,
    model_identity,
    reference_pass_settings,
)
from zephyr.levers import LayoutChoice, choose_layout
from zephyr.packing import layout_forward
from zephyr.stages.common import train_stage
from zephyr.stages.preference import PairLengthGrouping, build_preference_trainer, load_reference
from zephyr.stages.reliability import ReliableTrainerMixin

logger = logging.getLogger("zephyr")
CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrDPOConfig)
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")  # a tokenized preference row


class ZephyrDPOTrainer(PairLengthGrouping, ReliableTrainerMixin, ReferencePassHooks, WeightedMetrics, DPOTrainer):
    """TRL's DPOTrainer whose on-disk cache of precomputed reference log-probs survives unrelated changes, with
    clean stops, a non-finite guard, atomic checkpoints and exact resume (zephyr/stages/reliability.py).

    TRL keys that cache by the tokenized dataset's fingerprint, which hashes the whole DPOConfig (a filter
    closure captures it): changing output_dir or the learning rate misses the cache and recomputes the whole
    reference pass. Here the key is made of what shapes the pass (`reference_cache_key`): the token ids, the
    reference weights, the batching and every setting not known to leave it unchanged; a sweep over beta or
    learning rate computes the reference pass once. `reference_logps.json` in output_dir says, per split, whether
    the pass ran or came from the cache, and how long computing it took: the sweep summary adds these up into the
    compute the cache saved.
    """

    REFERENCE_STATS = "reference_logps.json"
    metric_weights = DPO_WEIGHTS
    eval_gathers_without_repeats = True
    PAIR_COLUMNS, PROMPT_COLUMN = ("chosen_ids", "rejected_ids"), "prompt_ids"
    reference_batches_computed = 0  # batches of the reference pass run by this process (not read from the cache)
    _layout: LayoutChoice | None = None

    @property
    def pad_id(self) -> int:
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)  # a processor holds one
        return tokenizer.pad_token_id or 0

    def compute_ref_log_probs(self, model, inputs):
        self.reference_batches_computed += 1
        # The reference pass of precompute_ref_log_probs, packed like the policy's forward: its padded batches are
        # mostly padding at UltraFeedback lengths (measured on an H200: most of the dDPO start-up).
        with fast_lm_head(self.args):
            return super().compute_ref_log_probs(self.forward_of(model, inputs), inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with fast_lm_head(self.args), self.reference_like_policy(inputs):
            return super().compute_loss(self.forward_of(model, inputs), inputs, return_outputs, num_items_in_batch)

    @contextlib.contextmanager
    def reference_like_policy(self, inputs):
        """A reference copy run at every step (precompute_ref_log_probs off) takes the policy's layout too: as
        fast, and at step 0 its log-probs are the policy's bit for bit (the rewards are exactly 0). A LoRA policy
        without a precomputed reference has no copy: TRL disables the adapter, whose zero update at step 0 leaves the
        log-probs equal to fp32 rounding (rewards of order 1e-8)."""
        reference = self.ref_model
        if reference is not None:
            self.ref_model = self.forward_of(reference, inputs)
        try:
            yield
        finally:
            self.ref_model = reference

    def forward_of(self, model, inputs):
        """The model as TRL's loss calls it: packed (no padding), each prompt once per pair, or as it is; the
        layout exact for this model (zephyr/levers.py)."""
        if "attention_mask" not in inputs:
            return model
        return layout_forward(model, self.layout_choice(model), self.pad_id)

    def layout_choice(self, model) -> LayoutChoice:
        """Decided once, from the model's config and attention kernel; each fallback logged once."""
        if self._layout is None:
            config = self.accelerator.unwrap_model(model).config
            self._layout = choose_layout(config, self.args.packed_forward, self.args.share_prompt,
                                         attn_implementation(config))
            if self.accelerator.is_main_process:
                for line in self._layout.fallbacks:
                    logger.info("%s", line)
        return self._layout

    def run_record(self) -> dict:
        """What all_results.json keeps of this run's choices besides its metrics."""
        return self.layout_choice(self.model).record()

    def reference_cache_key(self, dataset: Dataset, batch_size: int) -> str:
        """What the reference log-probs of `dataset` depend on, hashed: its token ids, the reference weights and
        model config, the batching, the processes and device, the library versions, and every config field but
        the few known not to matter (zephyr/hooks/reference.py), so that a field a new TRL adds is keyed too."""
        reference = self.accelerator.unwrap_model(self.ref_model or self.model)
        parts = {
            "rows": content_digest(dataset, list(TOKEN_COLUMNS), rows_only=True),
            "batch_size": batch_size,
            "weights": self.reference_weights_hash,  # includes every weight's dtype
            "model_config": model_identity(reference.config),
            "settings": reference_pass_settings(self.args),
            "pad_token_id": self.pad_id,
            "processes": self.accelerator.num_processes,  # which rows share a padded batch
            "device": self.accelerator.device.type,
            # the precision in force, whoever set it: the recipe, or the launcher (ACCELERATE_MIXED_PRECISION)
            "autocast": str(self.accelerator.mixed_precision),
            "layout": self.layout_choice(reference).record(),  # the forward layout the pass runs
            "versions": [trl.__version__, transformers.__version__, torch.__version__],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:32]

    def reference_batch_size(self, dataset, batch_size: int) -> int:
        """The reference pass's pairs per batch: `ref_token_budget` tokens on average (packed, so the batch's
        cost is its real tokens), never fewer than TRL's own choice; TRL's choice when no budget is set or the
        user set precompute_ref_batch_size."""
        budget = self.args.ref_token_budget
        if not budget or self.args.precompute_ref_batch_size or not len(dataset):
            return batch_size
        tokens = [len(p) * 2 + len(c) + len(r) for p, c, r in zip(
            dataset[self.PROMPT_COLUMN], *(dataset[col] for col in self.PAIR_COLUMNS), strict=True)]
        return max(batch_size, int(budget // (sum(tokens) / len(tokens))))

    def precompute_reference(self, dataset, name, batch_size, trl_precompute):
        batch_size = self.reference_batch_size(dataset, batch_size)
        if not getattr(dataset, "cache_files", None) or not len(dataset):  # in memory: TRL keeps no cache file
            return trl_precompute(dataset, name, batch_size)
        key = self.reference_cache_key(dataset, batch_size)
        # TRL names its cache file after the dataset's fingerprint (and the weights hash): give it the key
        dataset = dataset.select(range(len(dataset)), new_fingerprint=key)
        # next to TRL's file: a lock, and what computing it once cost
        marker = Path(dataset.cache_files[0]["filename"]).parent / f"zephyr-reference-{key}"
        cost_file = marker.with_name(f"{marker.name}.cost.json")
        # Trials of a parallel sweep start together: the first computes, the others wait and then read its file.
        lock = FileLock(f"{marker}.lock") if self.accelerator.is_main_process else contextlib.nullcontext()
        with lock:
            batches, start = self.reference_batches_computed, time.perf_counter()
            dataset = trl_precompute(dataset, name, batch_size)
            seconds = time.perf_counter() - start
            cached = self.reference_batches_computed == batches
        if self.accelerator.is_main_process:
            if not cached:
                cost_file.write_text(json.dumps({"seconds": seconds, "rows": len(dataset)}))
            cost = json.loads(cost_file.read_text())["seconds"] if cost_file.is_file() else None
            self._record_reference_pass(name, {"rows": len(dataset), "computed": not cached,
                                               "seconds": round(seconds, 3), "cost_seconds": cost})
        return dataset

    def _record_reference_pass(self, split: str, entry: dict) -> None:
        path = Path(self.args.output_dir) / self.REFERENCE_STATS
        stats = json.loads(path.read_text()) if path.is_file() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**stats, split: entry}, indent=2))


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrDPOConfig):
    return build_preference_trainer(ZephyrDPOTrainer, model_args, data_args, training_args,
                                    ref_model=load_reference(model_args, training_args.precompute_ref_log_probs))


def main(argv: list[str]) -> dict:
    return train_stage(argv, "dpo", CONFIG_CLASSES, build_trainer)
