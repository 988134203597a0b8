"""dSFT: supervised fine-tuning on chat data with the loss on assistant turns (TRL's SFTTrainer)."""

from __future__ import annotations

import logging

from transformers import set_seed
from trl import SFTTrainer

from zephyr.configs import DataArguments, ModelArguments, ZephyrSFTConfig
from zephyr.data import prepare_datasets
from zephyr.modeling import load_model, load_tokenizer, lora_config
from zephyr.stages.common import parse_stage_args, resume_checkpoint, save_run_files, setup_logging

logger = logging.getLogger("zephyr.sft")

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrSFTConfig)


def main(argv: list[str]) -> dict:
    model_args, data_args, training_args = parse_stage_args(argv, CONFIG_CLASSES, "sft")
    setup_logging(training_args)
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(model_args)
    train_ds, eval_ds, report = prepare_datasets(data_args, "sft", tokenizer, training_args.max_length)

    model = load_model(model_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(model_args),
    )

    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    metrics = {**result.metrics, "train_samples": len(train_ds)}
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
        trainer.save_state()
        save_run_files(training_args.output_dir, "dSFT", (model_args, data_args, training_args), metrics, report,
                       model_args.model_name_or_path)
    logger.info("dSFT done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    logger.info("model, tokenizer, chat template, metrics and model card in %s", training_args.output_dir)
    return metrics
