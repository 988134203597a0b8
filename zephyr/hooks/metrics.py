"""TRL's logged metrics as means over the examples or tokens they describe, whatever the batching.

TRL 1.16's trainers append one value per batch to a list (the batch's mean reward, its token accuracy, its
entropy...) and log the plain mean of that list. With batches of unequal size (the last batch of an eval set: 100
pairs in batches of 32 give 32/32/32/4; answers of different lengths) that is not the mean over the eval set: the
last 4 pairs weigh as much as 32 (measured: an eval accuracy of 0.4453 for a per-pair 0.5000). And under several
processes DPO's `gather` repeats the pairs accelerate adds to even out the last batch.

`WeightedMetrics` records, for each appended value, how many examples or tokens it covers (`MetricWeight`:
gathered over the processes as TRL gathers the value) and, when TRL logs, replaces each list by the mean
weighted by those counts: the mean over the pairs, rows or tokens of the whole logging window. Each trainer names
its metrics in a table (`DPO_WEIGHTS`, ...); a metric in no table (a batch-level KL estimate, a running token
count) is left as TRL logs it. In evaluation, DPO's `gather` calls become `gather_for_metrics` ones.

What weighting cannot mend: under several processes, the last eval batch's values that TRL sums per process
before gathering (token sums, KTO's row sums, the reward trainer's and ORPO's per-process means) still include
the rows accelerate repeats to even that batch out; the weights count them too, so the mean stays consistent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from zephyr.hooks.registry import PrivateHook, declare, used

METRICS = declare(PrivateHook(
    "trl.DPOTrainer", "_metrics", "attribute", None,
    "TRL's DPO, SFT, KTO and reward trainers keep their per-batch metric values here and log their plain mean; no "
    "public setting weights them by the examples or tokens each covers (WeightedMetrics)"))
STORED_METRICS = declare(PrivateHook(
    "trl.experimental.orpo.ORPOTrainer", "_stored_metrics", "attribute", None,
    "TRL's ORPO and CPO trainers keep their per-batch metric values here and log their plain mean "
    "(WeightedMetrics)"))

Count = Callable[[dict[str, Any]], torch.Tensor]


@dataclass(frozen=True)
class MetricWeight:
    """Which metrics a count weighs. `count(batch)` is what this process's part of the value covers: a vector
    of ones, one per example, where TRL gathers the value per example (gathered the same way, so that the
    examples accelerate repeats to even out the last eval batch drop out of both), or a 0-d total (tokens,
    rows of one kind) where TRL gathers per-process sums. `gather` is how TRL gathers the value."""

    names: tuple[str, ...]  # metric names; a name ending in "/" stands for every metric it begins
    count: Count
    gather: Literal["for_metrics", "whole", "whole_in_train"] = "for_metrics"

    def covers(self, metric: str) -> bool:
        metric = metric.removeprefix("eval_")
        return any(metric.startswith(n) if n.endswith("/") else metric == n for n in self.names)


def _ones(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(n, device=like.device)


def _pairs(inputs: dict[str, Any]) -> torch.Tensor:  # DPO: chosen rows, then rejected rows
    return _ones(len(inputs["input_ids"]) // 2, inputs["input_ids"])


def _answer_tokens(half: int | None) -> Count:
    """Scored answer tokens (completion_mask from the second position on, as TRL shifts it), of the chosen
    (half 0), rejected (half 1) or all rows."""
    def count(inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"][:, 1:]
        return (mask if half is None else mask.chunk(2, dim=0)[half]).sum()
    return count


DPO_WEIGHTS = (
    MetricWeight(("rewards/", "logps/"), _pairs, gather="whole_in_train"),  # eval: see _without_repeats
    MetricWeight(("entropy",), _answer_tokens(None)),
    MetricWeight(("logits/chosen", "mean_token_accuracy"), _answer_tokens(0)),
    MetricWeight(("logits/rejected",), _answer_tokens(1)),
)


def _labelled_tokens(inputs: dict[str, Any]) -> torch.Tensor:
    """SFT: the positions TRL's fused head scores (its label mask), with labels shifted as it shifts them."""
    if "shift_labels" in inputs:
        return (inputs["shift_labels"] != -100).sum()
    return (inputs["labels"][..., 1:] != -100).sum()


SFT_WEIGHTS = (MetricWeight(("entropy", "mean_token_accuracy"), _labelled_tokens),)


def _kto_rows(desirable: bool) -> Count:
    def count(inputs: dict[str, Any]) -> torch.Tensor:
        label = torch.as_tensor(inputs["label"]).bool()
        return (label if desirable else ~label).sum()
    return count


def _kto_answer_tokens(desirable: bool | None) -> Count:
    def count(inputs: dict[str, Any]) -> torch.Tensor:
        mask = inputs["completion_mask"][:, 1:]
        if desirable is not None:
            label = torch.as_tensor(inputs["label"], device=mask.device).bool()
            mask = mask[label if desirable else ~label]
        return mask.sum()
    return count


KTO_WEIGHTS = (
    MetricWeight(("rewards/chosen", "logps/chosen"), _kto_rows(True)),
    MetricWeight(("rewards/rejected", "logps/rejected"), _kto_rows(False)),
    MetricWeight(("entropy",), _kto_answer_tokens(None)),
    MetricWeight(("logits/chosen",), _kto_answer_tokens(True)),
    MetricWeight(("logits/rejected",), _kto_answer_tokens(False)),
)


def _rm_rows(inputs: dict[str, Any]) -> torch.Tensor:  # a total: gather_for_metrics would cut a vector of rows
    return torch.tensor(len(inputs["input_ids"]), device=inputs["input_ids"].device)


RM_WEIGHTS = (
    MetricWeight(("accuracy", "margin"), _pairs),  # chosen rows, then rejected rows, as DPO's
    MetricWeight(("mean_reward",), _rm_rows, gather="whole"),
)
RM_EXTREMES = {"min_reward": min, "max_reward": max}  # of the whole window, not a mean of batch extremes


def _odds_pairs(batch: dict[str, Any]) -> torch.Tensor:  # ORPO and CPO batches: one row per pair
    return _ones(len(batch["chosen_input_ids"]), batch["chosen_input_ids"])


def _chosen_tokens(batch: dict[str, Any]) -> torch.Tensor:
    """ORPO's NLL term: a mean over every token of the chosen rows, prompt included, but the first."""
    return batch["chosen_attention_mask"][:, 1:].sum()


def _chosen_label_tokens(batch: dict[str, Any]) -> torch.Tensor:
    """CPO's NLL term: a mean over the chosen answers' labelled tokens (labels shifted by one)."""
    return (batch["chosen_labels"][:, 1:] != -100).sum()


PER_PAIR_ODDS = MetricWeight(("rewards/", "logps/", "logits/", "log_odds_ratio", "log_odds_chosen"), _odds_pairs)
ORPO_WEIGHTS = (MetricWeight(("nll_loss",), _chosen_tokens), PER_PAIR_ODDS)
CPO_WEIGHTS = (MetricWeight(("nll_loss",), _chosen_label_tokens), PER_PAIR_ODDS)


class WeightedMetrics:
    """Put before the TRL trainer in the bases and set `metric_weights`. The trainer's compute_loss (or, for
    ORPO and CPO, get_batch_loss_metrics) is where values are appended, with the batch at hand."""

    metric_weights: ClassVar[tuple[MetricWeight, ...]] = ()
    metric_extremes: ClassVar[dict[str, Callable[[list[float]], float]]] = {}  # RM's min/max: of the whole window
    margin_from_sides: ClassVar[bool] = False  # KTO: margins = mean chosen reward - mean rejected reward
    eval_gathers_without_repeats: ClassVar[bool] = False  # DPO: its per-pair `gather`s, see _without_repeats
    _metric_counts: dict[str, dict[str, list[float]]] | None = None

    def _metric_store(self, mode: str) -> dict[str, list[float]]:
        used(METRICS)
        return getattr(self, METRICS.name)[mode]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        return self._counted(mode, inputs, lambda: super(WeightedMetrics, self).compute_loss(
            model, inputs, return_outputs, num_items_in_batch))

    def _counted(self, mode: str, inputs: dict[str, Any], call: Callable[[], Any]) -> Any:
        values = self._metric_store(mode)
        before = {name: len(v) for name, v in values.items()}
        with self._without_repeats(mode):
            out = call()
        if self._metric_counts is None:
            self._metric_counts = {}
        counts = self._metric_counts.setdefault(mode, {})
        for name, v in values.items():
            added = len(v) - before.get(name, 0)
            weight = next((w for w in self.metric_weights if w.covers(name)), None)
            if added > 0 and weight is not None:
                counts.setdefault(name, []).extend([self._gathered(weight, inputs, mode)] * added)
        return out

    def _gathered(self, weight: MetricWeight, inputs: dict[str, Any], mode: str) -> float:
        local = weight.count(inputs).to(self.accelerator.device)
        whole = weight.gather == "whole" or (weight.gather == "whole_in_train" and mode == "train")
        return float((self.accelerator.gather if whole else self.accelerator.gather_for_metrics)(local).sum())

    @contextlib.contextmanager
    def _without_repeats(self, mode: str) -> Iterator[None]:
        """In evaluation, DPO's `accelerator.gather` of per-pair values as `gather_for_metrics`: without the
        repeated pairs that even out the last batch across processes (a no-op with one process). Not for the
        reward trainer, whose gathered rows (two per pair) gather_for_metrics would cut at the wrong place."""
        if mode != "eval" or self.accelerator.num_processes == 1 or not self.eval_gathers_without_repeats:
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

    def _log_mode(self, logs: dict[str, float]) -> str:
        return "train" if self.model.training else "eval"

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = self._log_mode(logs)
        values = self._metric_store(mode)
        counts = (self._metric_counts or {}).pop(mode, {})
        for name, v in list(values.items()):
            w = counts.get(name)
            extreme = self.metric_extremes.get(name.removeprefix("eval_"))
            if extreme is not None and v:
                values[name] = [extreme(v)]
            elif w and len(w) == len(v) and sum(w) > 0:
                values[name] = [sum(a * b for a, b in zip(w, v, strict=True)) / sum(w)]
        if self.margin_from_sides:
            prefix = next((p for p in ("eval_", "") if f"{p}rewards/margins" in values), None)
            if prefix is not None and values.get(f"{prefix}rewards/chosen") and values.get(f"{prefix}rewards/rejected"):
                values[f"{prefix}rewards/margins"] = [values[f"{prefix}rewards/chosen"][0]
                                                      - values[f"{prefix}rewards/rejected"][0]]
        super().log(logs, start_time)


class WeightedOddsMetrics(WeightedMetrics):
    """ORPO and CPO: get_batch_loss_metrics computes a batch's values (train and eval), its caller hands them to
    store_metrics, which keeps them in `_stored_metrics` under their logged names; they are logged in the mode
    the log's keys say."""

    _metric_batch: dict[str, Any] | None = None

    def _metric_store(self, mode: str) -> dict[str, list[float]]:
        used(STORED_METRICS)
        return getattr(self, STORED_METRICS.name)[mode]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super(WeightedMetrics, self).compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        self._metric_batch = batch
        return super().get_batch_loss_metrics(model, batch, train_eval)

    def store_metrics(self, metrics, train_eval="train"):
        batch, self._metric_batch = self._metric_batch, None
        if batch is None:  # values that come from no batch of get_batch_loss_metrics: as TRL logs them
            return super().store_metrics(metrics, train_eval)
        return self._counted(train_eval, batch, lambda: super(WeightedOddsMetrics, self).store_metrics(
            metrics, train_eval))

    def _log_mode(self, logs: dict[str, float]) -> str:
        return "train" if "loss" in logs else "eval"  # as TRL's ORPO and CPO trainers tell them apart
