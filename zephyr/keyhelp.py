"""`zephyr COMMAND --help`: the command's usage, then every recipe key it takes with type, default and help
text, one section per config class. Built from the config dataclasses themselves, so it cannot drift from them."""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from typing import Any

from zephyr.stages import STAGES

# command -> ("module:ATTRIBUTE" holding its config class or classes, usage line); the stages from their table
COMMAND_CONFIGS = {
    **{name: (stage.configs, stage.usage) for name, stage in STAGES.items()},
    "binarize": ("zephyr.aif.ratings:RatingsConfig", "[RECIPE.yaml] --source DATASET --output_dir DIR [overrides]"),
    "sweep": ("zephyr.sweep:SweepConfig", "SWEEP.yaml [--export-best FILE]"),
}

SECTION_TITLES = {  # class name -> section heading; other classes are headed by their own name
    "ModelArguments": "model",
    "DataArguments": "data",
    "ZephyrSFTConfig": "training (TRL SFTConfig and transformers TrainingArguments, with zephyr's defaults)",
    "ZephyrDPOConfig": "training (TRL DPOConfig and transformers TrainingArguments, with zephyr's defaults)",
    "ZephyrORPOConfig": "training (TRL experimental ORPOConfig and transformers TrainingArguments, with zephyr's "
                        "defaults)",
    "ZephyrSimPOConfig": "training (TRL experimental CPOConfig and transformers TrainingArguments, with zephyr's "
                         "SimPO defaults)",
    "ZephyrKTOConfig": "training (TRL KTOConfig and transformers TrainingArguments, with zephyr's defaults)",
    "ZephyrRewardConfig": "training (TRL RewardConfig and transformers TrainingArguments, with zephyr's defaults)",
}


def type_name(tp: Any) -> str:
    """`int`, `float | None`, `list[str]`, `one of [sigmoid, hinge]`: how a key's type reads in help text."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of [" + ", ".join(map(str, args)) + "]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def key_lines(cls: type, prefix: str = "", flag: str = "--") -> list[str]:
    """One line per key: `--name TYPE [default: X]  help`; nested configs as `--outer.inner`, lists as `.N.`."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, f.type)
        nested = tp if dataclasses.is_dataclass(tp) else next(
            (a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
        if nested is not None:
            lines += key_lines(nested, f"{prefix}{f.name}.{'N.' if typing.get_origin(tp) is list else ''}", flag)
            continue
        if f.default is not dataclasses.MISSING:
            default = f"default: {f.default}"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"default: {f.default_factory()}"
        else:
            default = "required"
        text = " ".join(str(f.metadata.get("help", "")).split())
        lines.append(f"  {flag}{prefix}{f.name} {type_name(tp)}  [{default}]  {text}".rstrip())
    return lines


def config_classes(where: str) -> tuple[type, ...]:
    """The config class or classes at "module:ATTRIBUTE", as a tuple."""
    module_name, attribute = where.split(":")
    classes = getattr(importlib.import_module(module_name), attribute)
    return classes if isinstance(classes, tuple) else (classes,)


def command_help(command: str, summary: str) -> str:
    where, usage_line = COMMAND_CONFIGS[command]
    classes = config_classes(where)
    file_only = command == "sweep"  # a sweep is read from its file alone; stages also take overrides
    lines = [f"usage: zephyr {command} {usage_line}", "", summary, "",
             "Keys of the sweep file (nested: a.b)." if file_only else
             "Keys go in the recipe or as overrides (--key value, --key=value or key=value; nested: --a.b value, "
             "lists: --a.0.b value)."]
    for cls in classes:
        lines += ["", f"{SECTION_TITLES.get(cls.__name__, cls.__name__)}:",
                  *key_lines(cls, flag="" if file_only else "--")]
    return "\n".join(lines)
