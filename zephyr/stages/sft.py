"""dSFT: supervised fine-tuning on chat data with the loss on assistant turns (TRL's SFTTrainer)."""

from __future__ import annotations

from trl import SFTTrainer

from zephyr.configs import DataArguments, ModelArguments, ZephyrSFTConfig
from zephyr.data import prepare_datasets
from zephyr.modeling import load_model, load_tokenizer, lora_config
from zephyr.stages.common import train_stage
from zephyr.stages.reliability import ReliableTrainerMixin

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrSFTConfig)


class ZephyrSFTTrainer(ReliableTrainerMixin, SFTTrainer):
    """TRL's SFTTrainer with clean stops, a non-finite guard, atomic checkpoints and exact resume
    (zephyr/stages/reliability.py)."""


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrSFTConfig):
    tokenizer = load_tokenizer(model_args)
    train_ds, eval_ds, report = prepare_datasets(data_args, "sft", tokenizer, training_args.max_length)
    trainer = ZephyrSFTTrainer(
        model=load_model(model_args),
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(model_args),
    )
    return trainer, tokenizer, report


def main(argv: list[str]) -> dict:
    return train_stage(argv, "sft", "dSFT", CONFIG_CLASSES, build_trainer)
