"""dSFT: supervised fine-tuning on chat data with the loss on assistant turns (TRL's SFTTrainer)."""

from __future__ import annotations

from trl import SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from zephyr.configs import DataArguments, ModelArguments, ZephyrSFTConfig
from zephyr.data.pipeline import ChatTokenization
from zephyr.hooks import SFT_WEIGHTS, WeightedMetrics, fast_lm_head
from zephyr.modeling import load_model, load_tokenizer, lora_config
from zephyr.stages.common import prepared_data, train_stage
from zephyr.stages.reliability import ReliableTrainerMixin

CONFIG_CLASSES = (ModelArguments, DataArguments, ZephyrSFTConfig)


class ZephyrSFTTrainer(ReliableTrainerMixin, WeightedMetrics, SFTTrainer):
    """TRL's SFTTrainer with clean stops, a non-finite guard, atomic checkpoints and exact resume
    (zephyr/stages/reliability.py), its fused LM head fast on CPU (zephyr/hooks/lm_head.py), and its entropy and
    token accuracy logged per token, not per batch (zephyr/hooks/metrics.py)."""

    metric_weights = SFT_WEIGHTS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with fast_lm_head(self.args):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def trainer_tokenization(tokenizer, args: ZephyrSFTConfig) -> ChatTokenization | None:
    """How SFTTrainer will tokenize the conversations, so that the data is tokenized once, while its lengths are
    checked, and SFTTrainer trains on those ids (it does not tokenize rows that come with `input_ids`). TRL uses
    the tokenizer's chat template, or with assistant_only_loss and a template without {% generation %} markers,
    TRL's training version of it. None where TRL changes the tokenizer itself first (chat_template_path,
    eos_token) or skips preparation: TRL then tokenizes, as it always did."""
    if args.chat_template_path or args.eos_token or (args.dataset_kwargs or {}).get("skip_prepare_dataset"):
        return None
    template = None
    if args.assistant_only_loss and not has_generation_markers(tokenizer.chat_template):
        try:
            template = get_training_chat_template(tokenizer)
        except Exception:  # a template TRL has no training version of: its own error comes when it is built
            return None
    return ChatTokenization(chat_template=template, assistant_masks=bool(args.assistant_only_loss))


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args: ZephyrSFTConfig):
    tokenizer = load_tokenizer(model_args)
    train_ds, eval_ds, report = prepared_data(data_args, training_args, "sft", tokenizer,
                                              tokenization=trainer_tokenization(tokenizer, training_args))
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
    return train_stage(argv, "sft", CONFIG_CLASSES, build_trainer)
