"""Load the model, tokenizer, quantization and LoRA settings a recipe asks for."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from zephyr.chat_template import ZEPHYR_CHAT_TEMPLATE
from zephyr.configs import ModelArguments

logger = logging.getLogger(__name__)


def load_tokenizer(args: ModelArguments) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a chat template (the recipe's, its own, or Zephyr's) and a pad token."""
    name = args.tokenizer_name_or_path or args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(
        name, revision=args.model_revision, trust_remote_code=args.trust_remote_code
    )
    if args.chat_template:
        tokenizer.chat_template = args.chat_template
    elif not tokenizer.chat_template:
        logger.info("%s has no chat template: using the Zephyr template", name)
        tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # pad == eos would hide the EOS label in collators that mask padding by id; prefer unk.
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            logger.warning("%s has no pad or unk token: padding with EOS", name)
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(args: ModelArguments, dtype: torch.dtype | None) -> Any:
    if not (args.load_in_4bit or args.load_in_8bit):
        return None
    if args.load_in_4bit and args.load_in_8bit:
        raise ValueError("load_in_4bit and load_in_8bit are exclusive: set one")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("load_in_4bit/load_in_8bit need bitsandbytes: pip install -e '.[quantization]'")
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
    if name in (None, "auto"):
        return "auto"
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype: expected auto, float32, bfloat16 or float16, got {name!r}")
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


def load_model(args: ModelArguments, name_or_path: str | None = None) -> PreTrainedModel:
    path = name_or_path or args.model_name_or_path
    if not path:
        raise ValueError("model_name_or_path is required (a hub id or a local model folder)")
    model = AutoModelForCausalLM.from_pretrained(path, **model_init_kwargs(args))
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def lora_config(args: ModelArguments) -> Any:
    """A peft LoraConfig when the recipe sets use_peft, else None."""
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
        task_type="CAUSAL_LM",
    )
