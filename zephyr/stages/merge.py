"""Merge a LoRA adapter into its base model and save the result as a plain model (safetensors)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger("zephyr.merge")


def merge_adapter(adapter_dir: str, output_dir: str, base: str | None = None, dtype: str = "float32",
                  trust_remote_code: bool = False) -> Path:
    adapter_config = Path(adapter_dir) / "adapter_config.json"
    if not adapter_config.is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (is this a LoRA output folder?)")
    base = base or json.loads(adapter_config.read_text())["base_model_name_or_path"]
    logger.info("merging %s into %s", adapter_dir, base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype),
                                                 trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(output_dir)
    tokenizer_source = adapter_dir if (Path(adapter_dir) / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code).save_pretrained(output_dir)
    logger.info("merged model written to %s", output_dir)
    return Path(output_dir)
