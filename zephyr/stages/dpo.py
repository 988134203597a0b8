"""dDPO: direct preference optimization against the frozen dSFT model (TRL's DPOTrainer)."""

from __future__ import annotations

from trl import DPOTrainer

from zephyr.configs import DataArguments, ModelArguments, ZephyrDPOConfig
from zephyr.data import prepare_datasets
from zephyr.modeling import load_model, load_tokenizer, lora_config
from zephyr.stages.common import train_stage

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrDPOConfig)


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
    return train_stage(argv, "dpo", "dDPO", CONFIG_CLASSES, build_trainer)
