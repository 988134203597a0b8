"""Load the model, tokenizer, quantization and LoRA settings a recipe asks for."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from zephyr.chat_template import ZEPHYR_CHAT_TEMPLATE
from zephyr.configs import ModelArguments
from zephyr.errors import RecipeError

logger = logging.getLogger(__name__)


def load_tokenizer(args: ModelArguments) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a chat template (the recipe's, its own, or Zephyr's) and a pad token."""
    key = "tokenizer_name_or_path" if args.tokenizer_name_or_path else "model_name_or_path"
    name = args.tokenizer_name_or_path or args.model_name_or_path
    check_model_path(name, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, revision=args.model_revision, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError) as err:  # no tokenizer files, unreachable hub, unknown tokenizer class
        raise RecipeError(f"{key}: cannot load a tokenizer from {name!r}: {one_line(err)}") from None
    if args.chat_template:
        tokenizer.chat_template = args.chat_template
    elif not tokenizer.chat_template:
        # On purpose (the Zephyr recipe starts from base models, which have none); it is saved with the model.
        logger.info("%s has no chat template: using zephyr's (the Zephyr-7B format, <|user|>...</s>); set "
                    "chat_template in the recipe to use another", name)
        tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE
    check_chat_template(tokenizer, "chat_template" if args.chat_template else key)
    if tokenizer.pad_token is None:
        # pad == eos would hide the EOS label in collators that mask padding by id; prefer unk.
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            logger.warning("%s has no pad or unk token: padding with EOS", name)
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def one_line(err: BaseException) -> str:
    """transformers' messages span lines; the CLI shows a user error as one paragraph."""
    return " ".join(str(err).split())


def check_model_path(name: str | None, key: str) -> None:
    """A local model path that is not there is an error naming the key; a hub id ("org/name") goes to the hub."""
    if not name:
        raise RecipeError(f"{key} is required (a hub id or a local model folder)")
    path = Path(name).expanduser()
    if not path.exists() and (name.startswith(("/", ".", "~")) or name.count("/") > 1):
        raise RecipeError(f"{key}: {name}: no such folder (expected a model folder with config.json and the "
                          "tokenizer files, or a hub id such as mistralai/Mistral-7B-v0.1)")


def check_chat_template(tokenizer: PreTrainedTokenizerBase, key: str) -> None:
    """Render a two-turn conversation now: a broken template (or one that needs a missing eos_token) would
    otherwise fail on the first data row, far from its cause."""
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                      tokenize=False)
    except Exception as err:  # jinja2 syntax/undefined errors, a None eos_token, raise_exception(...)
        raise RecipeError(f"{key}: the chat template cannot render a user/assistant conversation: "
                          f"{type(err).__name__}: {one_line(err)}") from None


def quantization_config(args: ModelArguments, dtype: torch.dtype | None) -> Any:
    if not (args.load_in_4bit or args.load_in_8bit):
        return None
    if args.load_in_4bit and args.load_in_8bit:
        raise RecipeError("keys 'load_in_4bit' and 'load_in_8bit': they are exclusive: set one")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError("keys 'load_in_4bit'/'load_in_8bit' need bitsandbytes, which is not installed: "
                          "pip install -e '.[quantization]'")
    from transformers import BitsAndBytesConfig

    if args.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=args.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=dtype if dtype not in (None, "auto") else torch.float32,
        bnb_4bit_use_double_quant=args.use_bnb_nested_quant,
        bnb_4bit_quant_storage=dtype if dtype not in (None, "auto") else torch.float32,
    )


def resolve_dtype(name: str | None) -> torch.dtype | str:
    """The torch dtype for a recipe's `dtype` (already checked and normalized by zephyr/rules.py when it came
    from a recipe; a ModelArguments built in code is checked here)."""
    if name in (None, "auto"):
        return "auto"
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype):
        raise RecipeError(f"key 'dtype': expected auto, float32, bfloat16 or float16, got {name!r}")
    return dtype


def model_init_kwargs(args: ModelArguments) -> dict[str, Any]:
    dtype = resolve_dtype(args.dtype)
    kwargs: dict[str, Any] = {
        "revision": args.model_revision,
        "trust_remote_code": args.trust_remote_code,
        "dtype": dtype,
    }
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    quant = quantization_config(args, dtype if isinstance(dtype, torch.dtype) else None)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    return kwargs


def load_model(args: ModelArguments, name_or_path: str | None = None, reward_head: bool = False) -> PreTrainedModel:
    """The causal LM to train (or a reference); with `reward_head`, the same weights under a one-output
    sequence-classification head (a reward model: the head starts random, seeded by the stage)."""
    path = name_or_path or args.model_name_or_path
    key = "model_name_or_path" if name_or_path in (None, args.model_name_or_path) else "ref_model_name_or_path"
    check_model_path(path, key)
    kwargs = model_init_kwargs(args)
    auto = AutoModelForSequenceClassification if reward_head else AutoModelForCausalLM
    quiet = contextlib.nullcontext()
    if reward_head:
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        kwargs["num_labels"] = 1  # one scalar score per sequence
        quiet = suppress_seqcls_warning()  # the new head and the unused LM head are meant: TRL says nothing either
    try:
        with quiet:
            model = auto.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:  # no config or weights there, an unknown model type, an unreachable hub
        raise RecipeError(f"{key}: cannot load a model from {path!r}: {one_line(err)}") from None
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def lora_config(args: ModelArguments, task_type: str = "CAUSAL_LM") -> Any:
    """A peft LoraConfig when the recipe sets use_peft, else None. task_type SEQ_CLS (a reward model) also trains
    and saves the score head in full."""
    if not args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_modules or "all-linear",
        modules_to_save=args.lora_modules_to_save,
        bias="none",
        task_type=task_type,
    )
