"""The eval recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from zephyr.inference.settings import GeneratorConfig, JudgeConfig, require_unique_names


@dataclass
class RewardAccuracyConfig:
    policy: str = field(metadata={"help": "The trained (DPO) model."})
    reference: str = field(metadata={"help": "Its reference (the dSFT model)."})
    dataset: str = field(metadata={"help": "Held-out preference pairs (any schema the data layer reads)."})
    split: str = field(default="test_prefs", metadata={"help": "Split of `dataset`."})
    max_pairs: int | None = field(default=None, metadata={"help": "Use at most this many pairs."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per forward batch."})


@dataclass
class EvalConfig:
    questions: str = field(metadata={"help": "JSONL question file (see zephyr/evaluation/questions.py)."})
    models: list[GeneratorConfig] = field(metadata={"help": "Models that answer (name, model, sampling...)."})
    judge: JudgeConfig = field(metadata={"help": "Grader: type llm (any backend) or callable."})
    output_dir: str = field(metadata={"help": "Where answers, grades, results.json, the table and plot go."})
    mode: Literal["single", "pairwise", "both"] = field(
        default="single", metadata={"help": "single: 1-10 grades; pairwise: win rate vs the baseline; both."}
    )
    baseline: str | None = field(
        default=None, metadata={"help": "Name of the baseline model: pairwise opponent and reference of differences."}
    )
    bootstrap_samples: int = field(default=2000, metadata={"help": "Bootstrap resamples for confidence intervals."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    shard: str | None = field(
        default=None,
        metadata={"help": "i/n: answer and grade only shard i of n of the questions (one worker per GPU; `zephyr "
                  "run` starts them). The run without shard merges every shard's records and reports."},
    )
    max_failure_rate: float = field(
        default=0.0,
        metadata={"help": "Fraction of answers, grades and verdicts that may still be missing (failed) at the end; "
                  "above it the eval exits non-zero (3) and a rerun retries them. Estimates never use them."},
    )
    reward_accuracy: RewardAccuracyConfig | None = field(
        default=None, metadata={"help": "Also measure implicit-reward accuracy of policy vs reference on pairs."}
    )

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        require_unique_names("models", names)
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not one of the models {names}")
        if self.mode != "single" and self.baseline is None:
            raise ValueError("pairwise evaluation needs a baseline model name")
