"""One module per stage, each with the same skeleton: args, logging, seed, data, model, trainer, train, save.

`STAGES` is the one table of stages, importing nothing: the command line (its commands, `--help`, which take
`--dry-run` and `--accelerate-config`), the key help, the planner, the pipeline (in this order) and sweeps all
read it. A new stage is one entry here plus its module, which has `main(argv)` and its config classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TRAINING_USAGE = "RECIPE.yaml [overrides] [--accelerate-config CFG] [--dry-run]"


@dataclass(frozen=True)
class Stage:
    name: str  # its command: `zephyr NAME`, and its key in a pipeline's `stages:`
    label: str  # in logs and model cards
    kind: Literal["training", "aif", "eval"]  # training: a TRL trainer, launched under accelerate; aif/eval: workers
    module: str  # where `main(argv)` lives
    configs: str  # "module:ATTRIBUTE" holding its config class or classes (read by --help and the planner)
    summary: str  # its line in `zephyr --help`
    usage: str = TRAINING_USAGE

    @property
    def training(self) -> bool:
        return self.kind == "training"


def _training(name: str, label: str, summary: str) -> Stage:
    return Stage(name, label, "training", f"zephyr.stages.{name}", f"zephyr.stages.{name}:CONFIG_CLASSES", summary)


# In pipeline order: a pipeline runs its stages in this order, whatever order its file lists them in.
STAGES: dict[str, Stage] = {s.name: s for s in (
    _training("sft", "dSFT", "dSFT: supervised fine-tuning on chat data (RECIPE [overrides])"),
    _training("rm", "reward model", "reward model: a score head trained on preference pairs; reports eval_accuracy"),
    Stage("aif", "AIF", "aif", "zephyr.stages.aif", "zephyr.aif.config:AIFConfig",
          "AIF: generate answers, judge them, binarize into pairs (RECIPE [overrides] [--rebinarize])",
          "RECIPE.yaml [overrides] [--shard i/n] [--rebinarize] [--dry-run]"),
    _training("dpo", "dDPO", "dDPO: preference optimization against the frozen dSFT model (RECIPE [overrides])"),
    _training("orpo", "ORPO", "ORPO: SFT and preference optimization in one pass from the base model, no reference "
              "(TRL experimental)"),
    _training("simpo", "SimPO", "SimPO: reference-free, length-normalised preference optimization; loss_type "
              "sigmoid + cpo_alpha 1.0 is CPO (TRL experimental CPOTrainer)"),
    _training("kto", "KTO", "KTO: desirable/undesirable answers (unpaired, or pairs split in two) against the "
              "frozen starting model"),
    Stage("eval", "evaluation", "eval", "zephyr.stages.eval", "zephyr.evaluation.config:EvalConfig",
          "evaluate: answer questions, grade them, report scores with confidence intervals",
          "RECIPE.yaml [overrides] [--dry-run]"),
)}


def training_stages() -> dict[str, str]:
    """name -> label of the training stages, in pipeline order (read when called: a stage added later counts)."""
    return {name: s.label for name, s in STAGES.items() if s.training}
