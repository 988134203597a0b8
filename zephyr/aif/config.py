"""The AIF recipe: prompts, generators, judge, binarization. Nested YAML sections map onto these dataclasses;
override a nested key with a dotted name: `--judge.max_retries 5`, `--generators.0.temperature 0.7`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from zephyr.inference.settings import (  # noqa: F401  (the AIF recipe's sections, shared with evaluation)
    EndpointSettings,
    GeneratorConfig,
    JudgeConfig,
    require_unique_names,
)


@dataclass
class PromptSource:
    id: str = field(metadata={"help": "Dataset with the prompts: hub id, local file or folder."})
    config: str | None = field(default=None, metadata={"help": "Dataset config name."})
    split: str = field(default="train", metadata={"help": "Split to read."})
    column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the prompt. Default: the first of `instruction` (UltraFeedback), `prompt`, "
            "`messages` (UltraChat: its first user turn)."
        },
    )
    id_column: str | None = field(
        default=None, metadata={"help": "Column with a stable prompt id; default `prompt_id` or a hash of the text."}
    )
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    turns: Literal["first", "every", "last"] = field(
        default="first",
        metadata={"help": "A dialogue (the `messages` column, UltraChat): first: its first user turn (Zephyr); "
                  "every: one prompt per user turn, the dialogue before it (with its own replies) as context, so "
                  "that later turns get rated too (per-turn preferences); last: only the last user turn, with "
                  "context. Ids of later turns: <id>#turn<k>."},
    )


@dataclass
class BinarizationConfig:
    score: Literal["mean_aspects", "overall", "reward"] = field(
        default="mean_aspects", metadata={"help": "mean_aspects (Argilla), overall (H4), or reward."}
    )
    rejected: Literal["random", "lowest", "random_lower"] = field(
        default="random",
        metadata={"help": "random among the rest (Zephyr, default), lowest (distilabel), random_lower (Argilla)."},
    )
    ties: Literal["drop", "keep"] = field(
        default="keep", metadata={"help": "A rejected answer scored equal to chosen: keep the pair or drop it."}
    )
    min_gap: float = field(default=0.0, metadata={"help": "Drop pairs whose score gap is below this."})
    seed: int = field(default=42, metadata={"help": "Seed of the random choices (per prompt, reproducible)."})
    test_size: float = field(default=0.0, metadata={"help": "Fraction of prompts held out as test_prefs."})


@dataclass
class AIFConfig:
    prompts: PromptSource = field(metadata={"help": "Where the prompts come from."})
    generators: list[GeneratorConfig] = field(metadata={"help": "The models that answer (UltraFeedback: 4)."})
    judge: JudgeConfig = field(metadata={"help": "Who rates the answers."})
    output_dir: str = field(metadata={"help": "Where completions, judgments and the dataset are written."})
    binarization: BinarizationConfig = field(default_factory=BinarizationConfig)
    shard: str | None = field(default=None, metadata={"help": "i/n: handle only shard i of n of the prompts."})
    max_failure_rate: float = field(
        default=0.0,
        metadata={"help": "Fraction of completions and judgments that may still be missing (failed) when the stage "
                  "ends; above it the stage exits non-zero (3) and a rerun retries them. 0: none may fail."},
    )

    def __post_init__(self) -> None:
        require_unique_names("generators", [g.name for g in self.generators])
        if not 0 <= self.max_failure_rate <= 1:
            raise ValueError(f"max_failure_rate: expected a fraction in [0, 1], got {self.max_failure_rate}")


