"""What the preference stages (dDPO, ORPO, SimPO, KTO, reward model) share: prepared data, the trainer built from
it, the frozen reference, and length-grouped batches of pairs."""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from zephyr.configs import DataArguments, ModelArguments
from zephyr.data.pipeline import DataReport
from zephyr.data.schemas import Kind
from zephyr.hooks import WeightedOddsMetrics
from zephyr.modeling import load_model, load_tokenizer, lora_config
from zephyr.stages.common import prepared_data
from zephyr.stages.reliability import ReliableTrainerMixin, SeededLengthGroupedSampler, data_seed


def build_preference_trainer(trainer_class: type, model_args: ModelArguments, data_args: DataArguments,
                             training_args: Any, kind: Kind = "preference", reward_head: bool = False,
                             **trainer_options: Any) -> tuple[Any, Any, DataReport]:
    """(trainer, tokenizer, data report) of a stage that trains `model_name_or_path` on preference rows (or, for
    kind "unpaired", KTO's rows); `trainer_options` go to the trainer as they are (a reference model)."""
    tokenizer = load_tokenizer(model_args)
    train_ds, eval_ds, report = prepared_data(data_args, training_args, kind, tokenizer)
    trainer = trainer_class(
        model=load_model(model_args, reward_head=reward_head),
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(model_args, "SEQ_CLS" if reward_head else "CAUSAL_LM"),
        **trainer_options,
    )
    return trainer, tokenizer, report


def load_reference(model_args: ModelArguments, precompute: bool) -> Any:
    """The frozen reference of DPO and KTO. With LoRA: None (TRL disables the adapter: the base is the reference,
    no copy). With precomputed log-probs and no explicit reference: None (TRL scores with the policy before
    training)."""
    if model_args.ref_model_name_or_path:
        ref = load_model(model_args, model_args.ref_model_name_or_path)
    elif model_args.use_peft or precompute:
        return None
    else:
        ref = load_model(model_args)
    # TRL only runs it under no_grad; freezing it too means no code path can ever give it gradients.
    return ref.eval().requires_grad_(False)


def pair_lengths(ds: Dataset, answers: tuple[str, str], prompt: str | None = None) -> list[int]:
    """Each tokenized pair's longest sequence: its prompt (when tokenized apart) plus its longer answer."""
    sides = zip(ds[answers[0]], ds[answers[1]], strict=True)
    prompts = ds[prompt] if prompt else [()] * len(ds)
    return [len(p) + max(len(a), len(b)) for p, (a, b) in zip(prompts, sides, strict=True)]


class PairLengthGrouping:
    """group_by_length for tokenized pairs. transformers' length grouping reads an `input_ids` or `length`
    column, which pair rows do not have: give it each pair's longest sequence. Put before ReliableTrainerMixin."""

    PAIR_COLUMNS: tuple[str, str]  # the two answers' token ids, as the trainer's tokenized rows name them
    PROMPT_COLUMN: str | None = None  # the prompt's token ids when the answers' ids leave it out

    def train_sampler(self, train_dataset, default):
        if self.args.train_sampling_strategy == "group_by_length" and self.train_dataset is not None:
            lengths = pair_lengths(self.train_dataset, self.PAIR_COLUMNS, self.PROMPT_COLUMN)
            return SeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                              lengths, data_seed(self.args))
        return super().train_sampler(train_dataset, default)


class ReliablePairTrainer(PairLengthGrouping, ReliableTrainerMixin, WeightedOddsMetrics):
    """Put before TRL's experimental ORPO or CPO trainer: zephyr's clean stops, non-finite guard, atomic checkpoints
    and exact resume (zephyr/stages/reliability.py). Those trainers save a checkpoint their own way (a model card
    first, then transformers' save), which runs inside zephyr's staged save: checkpoints are still published whole.
    Their tokenized rows hold each answer with its prompt."""

    PAIR_COLUMNS = ("chosen_input_ids", "rejected_input_ids")
