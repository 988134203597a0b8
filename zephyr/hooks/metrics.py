"""TRL's logged preference metrics as per-example means, whatever the batching.

TRL 1.16's DPOTrainer appends one value per batch to `self._metrics[mode][name]` (the batch's mean reward,
accuracy, margin, log-prob...) and logs the plain mean of those values. With batches of unequal size (the last
batch of an eval set: 100 pairs in batches of 32 give 32/32/32/4) that is not the mean over pairs: the last 4
pairs weigh as much as 32 (measured: an eval accuracy of 0.4453 for a per-pair 0.5000). And under several
processes its `gather` repeats the pairs accelerate adds to even out the last batch.

`PerExampleMetrics` records how many pairs each appended value of a per-pair metric (`rewards/*`, `logps/*`)
covers (gathered without those repeats) and, when TRL logs, replaces each list by the mean weighted by those
counts: the mean over pairs. In evaluation TRL's `gather` calls are made `gather_for_metrics` ones for the same
reason. TRL's per-token metrics (entropy, mean logits, token accuracy) are already token-weighted per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from zephyr.hooks.registry import PrivateHook, declare, used

METRICS = declare(PrivateHook(
    "trl.DPOTrainer", "_metrics", "attribute", None,
    "TRL keeps its per-batch metric values here and logs their plain mean; no public setting weights them by "
    "the examples each covers (PerExampleMetrics)"))


PER_PAIR = ("rewards/", "logps/")  # TRL's metrics that are means over the pairs of a batch


class PerExampleMetrics:
    """Put before DPOTrainer in the bases. `examples_in(inputs)` is the number of pairs of a batch."""

    _metric_weights: dict[str, dict[str, list[float]]] | None = None

    def examples_in(self, inputs: dict[str, Any]) -> int:
        return len(inputs["input_ids"]) // 2  # chosen rows, then rejected rows

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        used(METRICS)
        mode = "train" if self.model.training else "eval"
        values = getattr(self, METRICS.name)[mode]
        before = {name: len(v) for name, v in values.items()}
        with self._without_repeats(mode):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            ones = torch.ones(self.examples_in(inputs), device=self.accelerator.device)
            count = float(self.accelerator.gather_for_metrics(ones).sum()) if mode == "eval" else float(
                self.accelerator.gather(ones).sum())
        if self._metric_weights is None:
            self._metric_weights = {}
        weights = self._metric_weights.setdefault(mode, {})
        for name, v in values.items():
            added = len(v) - before.get(name, 0)
            if added > 0 and name.startswith(PER_PAIR):
                weights.setdefault(name, []).extend([count] * added)
        return out

    @contextlib.contextmanager
    def _without_repeats(self, mode: str) -> Iterator[None]:
        """In evaluation, TRL's `accelerator.gather` as `gather_for_metrics`: without the repeated pairs that even
        out the last batch across processes (a no-op with one process)."""
        if mode != "eval" or self.accelerator.num_processes == 1:
            yield
            return
        accelerator = self.accelerator
        real_gather = accelerator.gather

        def gather_without_repeats(tensor):
            accelerator.gather = real_gather  # gather_for_metrics gathers with it, then drops the repeats
            try:
                return accelerator.gather_for_metrics(tensor)
            finally:
                accelerator.gather = gather_without_repeats

        accelerator.gather = gather_without_repeats
        try:
            yield
        finally:
            del accelerator.gather  # the class's method again

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        values = getattr(self, METRICS.name)[mode]
        weights = (self._metric_weights or {}).pop(mode, {})
        for name, v in list(values.items()):
            w = weights.get(name)
            if w and len(w) == len(v) and sum(w) > 0:
                values[name] = [sum(a * b for a, b in zip(w, v, strict=True)) / sum(w)]
        super().log(logs, start_time)
