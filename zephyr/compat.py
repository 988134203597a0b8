"""Load recipes written for the alignment-handbook and for older TRL/transformers releases.

Keys that still mean something are renamed; keys whose feature no longer exists are dropped with a warning
that says what happens instead. Facts from transformers 5 / TRL 1.16 release notes (the README lists the tested versions).
"""

from __future__ import annotations

import logging
from typing import Any

import yaml

from zephyr.errors import RecipeError

logger = logging.getLogger(__name__)

# old key -> new key, same meaning
RENAMED = {
    "torch_dtype": "dtype",
    "max_seq_length": "max_length",
    "evaluation_strategy": "eval_strategy",
    "preprocessing_num_workers": "dataset_num_proc",
    "warmup_ratio": "warmup_steps",  # transformers 5 reads warmup_steps < 1 as a ratio
}

# key -> why it is ignored now
IGNORED = {
    "overwrite_output_dir": "removed in transformers 5; zephyr resumes from output_dir's last checkpoint instead "
    "(set resume: false to start over)",
    "max_prompt_length": "TRL 1.16 has no prompt-only truncation; max_length now bounds prompt + completion "
    "(truncation_mode keep_start), and rows whose prompt alone fills max_length are dropped and counted",
    "max_completion_length": "TRL 1.16 has no completion-only truncation; max_length bounds prompt + completion",
    "reference_free": "removed in TRL 1.16; DPO always uses a reference model",
    "generate_during_eval": "removed in TRL 1.16",
    "force_use_ref_model": "removed in TRL 1.16; with LoRA the reference is the base with the adapter disabled",
    "ref_model_init_kwargs": "removed in TRL 1.16; the reference loads like the policy (see ref_model_name_or_path)",
    "padding_value": "removed in TRL 1.16; the tokenizer's pad token is used",
    "truncation_side": "not supported; sequences are truncated on the right",
    "auto_insert_empty_system_msg": "not supported; conversations are used as written",
    "text_column": "not used; zephyr detects the dataset schema",
    "model_code_revision": "not used",
    "base_model_revision": "not used",
    "hub_model_revision": "not used; set hub_revision instead",
    "do_eval": "evaluation runs whenever eval_strategy is not 'no' and an eval split exists",
}


# Keys TRL 1.16 dropped from DPOConfig that its experimental ORPO and CPO configs still declare: kept for them.
STILL_DECLARED = frozenset({"max_completion_length", "padding_value", "generate_during_eval"})


def translate_legacy_keys(values: dict[str, Any], stage: str, source: str,
                          known: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Return a copy of `values` with legacy keys mapped; warn about every change. `known`: the keys the stage's
    configs declare; those of STILL_DECLARED among them are kept as they are."""
    out = dict(values)
    for old, new in RENAMED.items():
        if old in out:
            value = out.pop(old)
            if new in out:
                logger.warning("%s: '%s' ignored because '%s' is also set", source, old, new)
                continue
            logger.warning("%s: '%s' is now '%s'; using %s: %r", source, old, new, new, value)
            out[new] = value
    for key, why in IGNORED.items():
        if key in out and not (key in STILL_DECLARED and key in known):
            logger.warning("%s: ignoring '%s: %r': %s", source, key, out.pop(key), why)
    if out.pop("use_flash_attention_2", False):
        logger.warning("%s: 'use_flash_attention_2' is now 'attn_implementation: flash_attention_2'", source)
        out.setdefault("attn_implementation", "flash_attention_2")
    if "rpo_alpha" in out:
        alpha = out.pop("rpo_alpha")
        if alpha is not None:
            try:
                alpha = float(alpha)
            except (TypeError, ValueError):
                raise RecipeError(f"{source}: key 'rpo_alpha': expected a number, got {alpha!r}") from None
            logger.warning("%s: 'rpo_alpha: %s' is now loss_type [sigmoid, sft] with loss_weights [1.0, %s]",
                           source, alpha, alpha)
            out["loss_type"] = ["sigmoid", "sft"]
            out["loss_weights"] = [1.0, alpha]
    if "dataset_mixer" in out:
        out["dataset_mixture"] = _mixer_to_mixture(out, source)
    return out


def _yaml_or_text(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _mixer_to_mixture(out: dict[str, Any], source: str) -> dict[str, Any]:
    """The handbook's older form: dataset_mixer {id: fraction} x dataset_splits [train..., test...].
    Its fraction applied to train splits only; test splits were taken whole."""
    mixer = out.pop("dataset_mixer") or {}
    splits = out.pop("dataset_splits", None) or ["train", "test"]
    if isinstance(mixer, str):  # from the command line: `dataset_mixer={path: 1.0}`, written as in YAML
        mixer = _yaml_or_text(mixer)
    if isinstance(splits, str):  # `dataset_splits=[train_sft, test_sft]` or `train_sft,test_sft`
        parsed = _yaml_or_text(splits)
        splits = parsed if isinstance(parsed, list) else [p.strip() for p in splits.split(",") if p.strip()]
    if not isinstance(mixer, dict):
        raise RecipeError(f"{source}: key 'dataset_mixer': expected a mapping of dataset id: fraction, got {mixer!r}")
    if isinstance(splits, str):
        splits = [splits]
    for name, fraction in mixer.items():
        try:
            float(fraction)
        except (TypeError, ValueError):
            raise RecipeError(f"{source}: key 'dataset_mixer.{name}': expected a fraction such as 0.5, "
                              f"got {fraction!r}") from None
    configs = out.pop("dataset_configs", None)
    if isinstance(configs, str):
        configs = [configs]
    datasets = []
    for i, (name, fraction) in enumerate(mixer.items()):
        config = configs[i] if configs and i < len(configs) else None
        for split in splits:
            is_train = "train" in split
            datasets.append({"id": name, "config": config, "split": split, "role": "train" if is_train else "test",
                             "weight": float(fraction) if is_train else 1.0})
    logger.warning("%s: 'dataset_mixer'/'dataset_splits' converted to dataset_mixture with %d sources: %s", source,
                   len(datasets), describe_sources(datasets))
    return {"datasets": datasets, "seed": out.get("seed", 0)}


def describe_sources(entries: list[Any]) -> str:
    """`id (split S, role R, weight W); ...` for mixture entries, as the log shows them."""
    parts = []
    for e in entries:
        if isinstance(e, dict):
            parts.append(f"{e.get('id')} (split {e.get('split', 'train')}, role {e.get('role', 'train')}, "
                         f"weight {e.get('weight', 1.0)})")
        else:
            parts.append(repr(e))
    return "; ".join(parts) or "no sources"
