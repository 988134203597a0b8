"""Typed configuration for every stage. A recipe's keys map onto these dataclasses (see `zephyr.recipe`).

`ModelArguments` and `DataArguments` are ours; the trainer configs extend TRL's `SFTConfig` and `DPOConfig`
so that every TRL/transformers training key works in a recipe unchanged. The ORPO, SimPO/CPO, KTO and reward-model
configs, built from the same mixins, are in `zephyr.preference_configs`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from trl import DPOConfig, SFTConfig

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of the model to train (required)."}
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to load instead of the model's own."}
    )
    dtype: str | None = field(
        default="auto",
        metadata={"help": "Weights dtype: auto, float32, bfloat16 or float16 (`torch_dtype` in older recipes; null "
                  "means auto; fp32, bf16 and fp16 are read as float32, bfloat16 and float16)."},
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa or flash_attention_2; None lets transformers choose."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run custom model code shipped with a checkpoint. Off unless you trust it."}
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Jinja chat template to use instead of the tokenizer's. When neither exists, the Zephyr template "
            "(with {% generation %} markers for assistant-only loss) is used."
        },
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Quantize to 4-bit with bitsandbytes (QLoRA)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Quantize to 8-bit with bitsandbytes."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit quantization type: nf4 or fp4."})
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "Double quantization of the 4-bit scales."})
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt; None adapts all linear layers but the LM head."}
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter."}
    )
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "DPO and KTO only: the frozen reference model. Default: the model being trained (the dSFT model) "
            "as it is loaded, or with LoRA the base with the adapter disabled."
        },
    )


@dataclass
class DatasetSource:
    """One entry of `dataset_mixture.datasets`."""

    id: str
    config: str | None = None
    split: str = "train"
    columns: list[str] | None = None
    weight: float = 1.0
    role: Literal["train", "test"] = "train"


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A single dataset (hub id, local file or folder). Use this or dataset_mixture."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of `dataset_name`."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to train on."})
    dataset_test_split: str | None = field(
        default="test", metadata={"help": "Split of `dataset_name` to evaluate on (skipped if it does not exist)."}
    )
    dataset_mixture: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "Several sources mixed by weight: {datasets: [{id, config, split, columns, weight, role}], seed, "
            "test_split_size}. weight is the fraction of the source's rows to take (above 1 repeats rows); role is "
            "train (default) or test; test_split_size carves an eval set out of the mixed train rows."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many eval rows."})
    invalid_rows: Literal["error", "drop"] = field(
        default="error",
        metadata={
            "help": "What to do with a row that fails validation (empty content, roles not alternating, missing "
            "fields, chosen == rejected): error names the source and row; drop removes it and logs the count."
        },
    )
    long_rows: Literal["error", "drop", "truncate"] = field(
        default="error",
        metadata={
            "help": "Rows longer than max_length tokens: error, drop (counted and logged), or truncate (the "
            "trainer cuts them; DPO rows whose prompt alone fills max_length are still dropped and counted)."
        },
    )
    decontamination_file: str | None = field(
        default=None,
        metadata={"help": "File of benchmark prompts (.txt one per line, or .json/.jsonl with prompt/turns)."},
    )
    decontamination_method: Literal["ngram", "exact"] = field(
        default="ngram", metadata={"help": "exact: normalized text equality; ngram: any shared word n-gram."}
    )
    decontamination_ngram: int = field(default=8, metadata={"help": "n for n-gram decontamination."})


@dataclass
class _ZephyrTrainingDefaults:
    """Defaults shared by every zephyr training config (mixed in before TRL's class so these win)."""

    resume: bool = field(
        default=True, metadata={"help": "Resume from the last complete checkpoint in output_dir when there is one. "
                                "false: start over, removing the checkpoints a previous run left there."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. Default: on when a CUDA GPU supports it, off on CPU."},
    )
    report_to: str | list[str] = field(
        default="none", metadata={"help": "Dashboards to log to: none, all, wandb, tensorboard, trackio, mlflow."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save checkpoints: no, steps, epoch."})
    dataloader_pin_memory: bool | None = field(
        default=None, metadata={"help": "Pin batches in host memory. Default: on with a CUDA GPU, off on CPU."}
    )

    def __post_init__(self) -> None:
        self._use_activation_checkpointing_names()
        self._fit_dataset_num_proc()
        gpu = torch.cuda.is_available()
        if self.bf16 is None:
            # TRL turns bf16 on by default, which transformers refuses on a CPU-only machine.
            self.bf16 = not self.fp16 and gpu and torch.cuda.is_bf16_supported()
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = gpu
        if not gpu and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Several processes on a CPU-only machine (torchrun, `accelerate launch --multi_gpu`): transformers
            # only shards the data across them when told it is on CPU, and gloo is the backend that works there.
            self.use_cpu = True
            self.ddp_backend = self.ddp_backend or "gloo"
        super().__post_init__()

    def _use_activation_checkpointing_names(self) -> None:
        """transformers 5 renamed gradient_checkpointing(_kwargs) to activation_checkpointing(_kwargs) and warns
        (a FutureWarning from site-packages) whenever a config sets an old name; TRL's default and handbook recipes
        (gradient_checkpointing_kwargs: {use_reentrant: false}) still do. Same meaning: move them to the new names
        (a new name the recipe set wins); transformers then mirrors them back into the old ones."""
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if getattr(self, new) is None:
                setattr(self, new, getattr(self, old))
            setattr(self, old, None)

    def _fit_dataset_num_proc(self) -> None:
        """More dataset worker processes than cores only adds start-up time, and datasets repeats one warning per
        worker; handbook recipes ask for 12."""
        cores = available_cores()
        if self.dataset_num_proc is not None and self.dataset_num_proc > cores:
            logger.warning("dataset_num_proc: %d is more than the %d CPU core(s) this process may use: using %d",
                           self.dataset_num_proc, cores, cores)
            self.dataset_num_proc = cores


@dataclass
class _FusedLMHeadSettings:
    """For the trainers that score answers with TRL's fused LM head (SFT, DPO, KTO); ORPO, CPO and the reward
    model compute full logits or a score head, where these settings would do nothing."""

    lm_head_labels_only: bool = field(
        default=True,
        metadata={"help": "Project through the LM head only the positions whose log-prob the loss uses (answers "
                  "and assistant turns), on CPU too; TRL does so only on CUDA/XPU. Same log-probs, less compute "
                  "(zephyr/hooks/lm_head.py)."},
    )
    cpu_log_prob_kernel: bool = field(
        default=True,
        metadata={"help": "On CPU, compute the LM head's log-probs with zephyr's kernel (cache-sized tiles, in "
                  "place) instead of TRL's torch fallback; same results, several times faster. GPUs keep TRL's "
                  "Triton kernels (zephyr/lm_head_cpu.py)."},
    )


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a scheduler or taskset may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class ZephyrSFTConfig(_ZephyrTrainingDefaults, _FusedLMHeadSettings, SFTConfig):
    """TRL's SFTConfig with zephyr defaults: loss on assistant turns only, resume when rerun."""

    assistant_only_loss: bool = field(
        default=True, metadata={"help": "Compute the loss on assistant turns only (needs {% generation %} markers)."}
    )


@dataclass
class ZephyrDPOConfig(_ZephyrTrainingDefaults, _FusedLMHeadSettings, DPOConfig):
    """TRL's DPOConfig with zephyr defaults: reference log-probs computed once before training (and cached on
    disk for the next run with the same data and reference), so no reference model is held or run per step."""

    packed_forward: bool = field(
        default=True,
        metadata={"help": "Run the policy on the batch's real tokens packed into rows (no padding), with a "
                  "separate attention block per sequence; same log-probs, less compute (zephyr/packing.py)."},
    )
    share_prompt: bool = field(
        default=True,
        metadata={"help": "With packed_forward: compute each pair's prompt once, the chosen and rejected answers "
                  "both attending to it (a block attention mask; sdpa, eager and flex attention, else plain "
                  "packing). Same log-probs, fewer tokens (zephyr/packing.py)."},
    )
    ref_token_budget: int | None = field(
        default=None,
        metadata={"help": "With precompute_ref_log_probs and no precompute_ref_batch_size: size the reference "
                  "pass's batches by tokens, as many pairs as this many tokens hold on average, instead of the "
                  "training batch size (a forward-only pass leaves a GPU idle at training batch sizes). "
                  "E.g. 65536 on an 80 GB GPU."},
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Compute the reference log-probs once before training (cached on disk across runs) "
                  "instead of running the reference model at every step."},
    )
