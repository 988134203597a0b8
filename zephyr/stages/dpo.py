"""dDPO: direct preference optimization against the frozen dSFT model (TRL's DPOTrainer)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from datasets.fingerprint import Hasher
from filelock import FileLock
from trl import DPOTrainer

from zephyr.configs import DataArguments, ModelArguments, ZephyrDPOConfig
from zephyr.data import prepare_datasets
from zephyr.data.cache import content_digest
from zephyr.hooks import trl_reference_hash
from zephyr.modeling import load_model, load_tokenizer, lora_config
from zephyr.packing import PackedForward
from zephyr.stages.common import train_stage
from zephyr.stages.reliability import ReliableTrainerMixin, SeededLengthGroupedSampler, data_seed

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrDPOConfig)


class ZephyrDPOTrainer(ReliableTrainerMixin, DPOTrainer):
    """TRL's DPOTrainer whose on-disk cache of precomputed reference log-probs survives unrelated changes, with
    clean stops, a non-finite guard, atomic checkpoints and exact resume (zephyr/stages/reliability.py).

    TRL keys that cache by the tokenized dataset's fingerprint, which hashes the whole DPOConfig (a filter
    closure captures it): changing output_dir or the learning rate misses the cache and recomputes the whole
    reference pass. The log-probs depend only on the token ids, the reference weights and the batching, so the
    key here is made of those; a sweep over beta or learning rate computes the reference pass once.
    `reference_logps.json` in output_dir says, per split, whether the pass ran or came from the cache, and how
    long computing it took: the sweep summary adds these up into the compute the cache saved.
    """

    REFERENCE_STATS = "reference_logps.json"

    def __init__(self, *args, **kwargs) -> None:
        with trl_reference_hash():  # TRL's SHA-256 of every weight costs seconds per billion parameters
            super().__init__(*args, **kwargs)

    def compute_ref_log_probs(self, model, inputs):
        # The reference pass of precompute_ref_log_probs, packed like the policy's forward: its padded batches are
        # mostly padding at UltraFeedback lengths (measured on an H200: most of the dDPO start-up).
        if self.args.packed_forward and "attention_mask" in inputs:
            model = PackedForward(model, self._tokenizer.pad_token_id or 0)
        return super().compute_ref_log_probs(model, inputs)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        if not getattr(dataset, "cache_files", None):  # in-memory data: TRL computes without a cache file
            return super()._precompute_ref_logps(dataset, name, batch_size)
        dataset._fingerprint = content_digest(dataset, ["prompt_ids", "chosen_ids", "rejected_ids"], batch_size,
                                              self.args.max_length, self.args.truncation_mode)
        # the file TRL reads or writes (same key as TRL's), and next to it what computing it once cost
        cache_file = dataset._get_cache_file_path(Hasher.hash((dataset._fingerprint, self._precompute_model_hash)))
        cost_file = Path(cache_file + ".cost.json")
        # Trials of a parallel sweep start together: the first computes, the others wait and then read its file.
        lock = FileLock(cache_file + ".lock") if self.accelerator.is_main_process else contextlib.nullcontext()
        with lock:
            cached, start = os.path.exists(cache_file), time.perf_counter()
            dataset = super()._precompute_ref_logps(dataset, name, batch_size)
            seconds = time.perf_counter() - start
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

    def _compute_loss(self, model, inputs, return_outputs):
        if self.args.packed_forward and "attention_mask" in inputs:
            model = PackedForward(model, self._tokenizer.pad_token_id or 0)
        return super()._compute_loss(model, inputs, return_outputs)

    def _get_train_sampler(self, train_dataset=None):
        # transformers' length grouping reads an `input_ids` or `length` column; a tokenized preference row has
        # neither (prompt_ids, chosen_ids, rejected_ids), so give it the pair's longest sequence.
        if self.args.train_sampling_strategy == "group_by_length" and self.train_dataset is not None:
            ds = self.train_dataset
            lengths = [len(p) + max(len(c), len(r))
                       for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)]
            return SeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                              lengths, data_seed(self.args))
        return super()._get_train_sampler(train_dataset)


def load_reference(model_args: ModelArguments, training_args: ZephyrDPOConfig):
    """The frozen reference. With LoRA: None (TRL disables the adapter: the base is the reference, no copy).
    With precomputed log-probs and no explicit reference: None (TRL scores with the policy before training)."""
    if model_args.ref_model_name_or_path:
        ref = load_model(model_args, model_args.ref_model_name_or_path)
    elif model_args.use_peft or training_args.precompute_ref_log_probs:
        return None
    else:
        ref = load_model(model_args)
    # TRL only runs it under no_grad; freezing it too means no code path can ever give it gradients.
    return ref.eval().requires_grad_(False)


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrDPOConfig):
    tokenizer = load_tokenizer(model_args)
    train_ds, eval_ds, report = prepare_datasets(data_args, "preference", tokenizer, training_args.max_length)
    trainer = ZephyrDPOTrainer(
        model=load_model(model_args),
        ref_model=load_reference(model_args, training_args),
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(model_args),
    )
    return trainer, tokenizer, report


def main(argv: list[str]) -> dict:
    return train_stage(argv, "dpo", "dDPO", CONFIG_CLASSES, build_trainer)
