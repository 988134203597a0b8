"""dDPO: direct preference optimization against the frozen dSFT model (TRL's DPOTrainer)."""

from __future__ import annotations

import logging

from transformers import set_seed
from trl import DPOTrainer

from zephyr.configs import DataArguments, ModelArguments, ZephyrDPOConfig
from zephyr.data import prepare_datasets
from zephyr.modeling import load_model, load_tokenizer, lora_config
from zephyr.stages.common import parse_stage_args, resume_checkpoint, save_run_files, setup_logging

logger = logging.getLogger("zephyr.dpo")

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrDPOConfig)


def load_reference(model_args: ModelArguments, training_args: ZephyrDPOConfig):
    """The frozen reference. With LoRA: None (TRL disables the adapter: the base is the reference, no copy).
    With precomputed log-probs and no explicit reference: None (TRL scores with the policy before training)."""
    if model_args.ref_model_name_or_path:
        return load_model(model_args, model_args.ref_model_name_or_path)
    if model_args.use_peft or training_args.precompute_ref_log_probs:
        return None
    return load_model(model_args)


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrDPOConfig):
    tokenizer = load_tokenizer(model_args)
    train_ds, eval_ds, report = prepare_datasets(data_args, "preference", tokenizer, training_args.max_length)
    trainer = DPOTrainer(
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
    model_args, data_args, training_args = parse_stage_args(argv, CONFIG_CLASSES, "dpo")
    setup_logging(training_args)
    set_seed(training_args.seed)

    trainer, tokenizer, report = build_trainer(model_args, data_args, training_args)
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(training_args))
    metrics = {**result.metrics, "train_samples": report.train_rows}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
        trainer.save_state()
        save_run_files(training_args.output_dir, "dDPO", (model_args, data_args, training_args), metrics, report,
                       model_args.model_name_or_path)
    logger.info("dDPO done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    logger.info("model, tokenizer, metrics and model card in %s", training_args.output_dir)
    return metrics
