"""Resolve a stage's recipe without loading a model or a dataset: the checks a real run would make from the
recipe alone (unknown key, wrong type, a local file that is missing, a path no earlier stage writes), and a
plain description of what the stage will do. `zephyr run` makes these checks for every stage before it starts
the first one; `--dry-run` prints them. Hub ids are taken as they are: nothing here goes online.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from zephyr.launch import TRAINING, LaunchSettings
from zephyr.recipe import RecipeError, read_yaml

# Keys whose values name a model, a dataset or a file (the last part of a dotted key).
PATH_KEYS = {"model_name_or_path", "tokenizer_name_or_path", "ref_model_name_or_path", "dataset_name", "id",
             "model", "questions", "dataset", "policy", "reference", "decontamination_file"}
FILE_KEYS = {"decontamination_file"}  # always local files, never hub ids
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow")


def resolve(name: str, argv: list[str]) -> tuple[Any, ...]:
    """The stage's typed configs from recipe + overrides, exactly as the stage parses them."""
    from zephyr.keyhelp import config_classes
    from zephyr.recipe import parse_stage_args
    from zephyr.stages import STAGES

    if name not in STAGES:
        raise RecipeError(f"unknown stage {name!r} (expected one of {', '.join(STAGES)})")
    if STAGES[name].kind == "aif":
        argv = [a for a in argv if a != "--rebinarize"]
    return parse_stage_args(argv, config_classes(STAGES[name].configs), name)


def flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a config (dataclasses, dicts and lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in flat(v, f"{prefix}{k}.")]
    if isinstance(value, list):
        return [kv for i, v in enumerate(value) for kv in flat(v, f"{prefix}{i}.")]
    return [(prefix[:-1], value)]


def looks_local(key: str, value: str) -> bool:
    """A local path rather than a hub id ("org/name") or an endpoint's model name."""
    return (key in FILE_KEYS or value.startswith(("/", ".", "~")) or value.count("/") > 1
            or value.endswith(FILE_SUFFIXES))


def check_paths(name: str, configs: tuple[Any, ...], produced: list[Path]) -> None:
    """Every local path the stage reads exists, or lies in an output folder of an earlier stage of this run."""
    for config in configs:
        backend_of: dict[str, str] = {}
        leaves = flat(config)
        for key, value in leaves:
            if key.endswith("backend"):
                backend_of[key.rsplit(".", 1)[0] if "." in key else ""] = value
        for key, value in leaves:
            last = key.rsplit(".", 1)[-1]
            if last not in PATH_KEYS or not isinstance(value, str) or not value or not looks_local(last, value):
                continue
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            if last == "model" and backend_of.get(parent) == "openai":
                continue  # an endpoint's model name, not a path
            path = Path(value).expanduser()
            if path.exists() or any(path == out or out in path.parents for out in produced):
                continue
            if not produced:
                raise RecipeError(f"{key}: {value}: no such file or folder")
            raise RecipeError(f"stage {name}: {key}: {value}: no such file or folder, and no earlier stage of "
                              f"this run writes it (earlier outputs: {', '.join(str(p) for p in produced)})")


def raw_keys(argv: list[str]) -> set[str]:
    """The keys the recipe file and its overrides set themselves (to tell defaults from choices)."""
    keys = set(read_yaml(argv[0])) if argv and Path(argv[0]).is_file() else set()
    return keys | {a.lstrip("-").split("=", 1)[0] for a in argv[1:]}


def describe(name: str, configs: tuple[Any, ...], argv: list[str], launch: LaunchSettings | None) -> list[str]:
    """What the stage will do, one fact a line."""
    if name in TRAINING:
        model, data, train = configs
        processes = launch.processes() if launch else 1
        global_batch = train.per_device_train_batch_size * train.gradient_accumulation_steps * processes
        keys = raw_keys(argv)
        precision = "bf16" if train.bf16 else "fp16" if train.fp16 else "fp32"
        if not {"bf16", "fp16"} & keys:
            precision += " here (auto: bf16 on a GPU that supports it, fp32 on CPU)"
        from zephyr.preflight import precision_note

        note = precision_note(model, train)
        if note:
            precision += f"; {note}"
        lines = [
            f"model: {model.model_name_or_path} (dtype {model.dtype}"
            + (f", LoRA r={model.lora_r}" if model.use_peft else "")
            + (", 4-bit" if model.load_in_4bit else "") + ")",
            f"processes: {processes}" + (f" ({launch.accelerate_config})" if launch and launch.accelerate_config
                                         else ""),
            f"global batch: {train.per_device_train_batch_size} per device x {train.gradient_accumulation_steps} "
            f"accumulation x {processes} processes = {global_batch}",
            f"precision: {precision}; attention: {model.attn_implementation or 'auto (transformers chooses)'}",
            f"max_length {train.max_length}, lr {train.learning_rate} {getattr(train.lr_scheduler_type, 'value', train.lr_scheduler_type)}, "
            f"epochs {train.num_train_epochs}" + (f", max_steps {train.max_steps}" if train.max_steps > 0 else ""),
            *data_lines(data),
        ]
        return lines + objective_lines(name, model, train)
    (cfg,) = configs
    if name == "aif":
        lines = [f"prompts: {cfg.prompts.id} [{cfg.prompts.split}]"
                 + (f", first {cfg.prompts.max_prompts}" if cfg.prompts.max_prompts else "")]
        lines += [f"generator {g.name}: {g.backend} {g.model}, {g.num_completions} completion(s), temperature "
                  f"{g.temperature}" for g in cfg.generators]
        judge = cfg.judge
        lines.append(f"judge: {judge.type}" + (f" ({judge.backend} {judge.model})" if judge.type == "llm" else ""))
        b = cfg.binarization
        lines.append(f"binarization: score {b.score}, rejected {b.rejected}, ties {b.ties}")
        return lines
    lines = [f"questions: {cfg.questions}", *(f"model {m.name}: {m.backend} {m.model}" for m in cfg.models),
             f"judge: {cfg.judge.type}" + (f" ({cfg.judge.backend} {cfg.judge.model})" if cfg.judge.type == "llm"
                                          else ""),
             f"mode: {cfg.mode}" + (f", baseline {cfg.baseline}" if cfg.baseline else "")]
    if cfg.reward_accuracy:
        r = cfg.reward_accuracy
        lines.append(f"reward accuracy: {r.policy} vs {r.reference} on {r.dataset} [{r.split}]")
    return lines


def data_lines(data: Any) -> list[str]:
    if data.dataset_mixture:
        return [f"data: {d['id']} [{d.get('split', 'train')}] weight {d.get('weight', 1.0)} as "
                f"{d.get('role', 'train')}" for d in data.dataset_mixture.get("datasets", [])]
    from zephyr.rules import is_one_split

    if data.dataset_test_split and not is_one_split(Path(data.dataset_name).expanduser()):
        return [f"data: {data.dataset_name} [train: {data.dataset_train_split}, eval: {data.dataset_test_split}]"]
    why = "a single file has one split" if data.dataset_test_split else "dataset_test_split: null"
    return [f"data: {data.dataset_name} [train: {data.dataset_train_split}, no eval set ({why})]"]


def objective_lines(name: str, model: Any, train: Any) -> list[str]:
    """What a training stage optimizes, and against which reference."""
    if name == "dpo":
        return [f"reference: {reference_line(model, train)}; beta {train.beta}, loss {train.loss_type}",
                layout_line(model, train)]
    if name == "orpo":
        return [f"no reference model: loss = NLL(chosen) + beta {train.beta} x odds-ratio loss (TRL experimental "
                "ORPOTrainer)"]
    if name == "simpo":
        margin = f", simpo_gamma {train.simpo_gamma:g}" if train.loss_type == "simpo" else ""
        return [f"no reference model: loss {train.loss_type}, beta {train.beta}{margin}, cpo_alpha {train.cpo_alpha} "
                "(TRL experimental CPOTrainer)"]
    if name == "kto":
        return [f"reference: {reference_line(model, train)}; beta {train.beta}, loss {train.loss_type}, weights "
                f"desirable {train.desirable_weight} / undesirable {train.undesirable_weight}",
                "rows: unpaired (prompt, completion, label), or each pair split into a desirable and an undesirable row"]
    if name == "rm":
        return [f"reward model: {model.model_name_or_path} with a one-output score head; loss -log sigmoid(score "
                "chosen - score rejected), eval_accuracy on the eval pairs"]
    return []


def layout_line(model: Any, train: Any) -> str:
    """The forward layout zephyr/levers.py will choose, from the model's config when it is on this machine (a
    local folder or the Hub cache; nothing is downloaded)."""
    from transformers import AutoConfig

    from zephyr.levers import choose_layout

    try:
        config = AutoConfig.from_pretrained(model.model_name_or_path, local_files_only=True,
                                            trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError):
        return "forward layout: decided when the model's config is loaded (not on this machine yet)"
    kernel = model.attn_implementation or "sdpa"  # transformers' default where torch has it
    choice = choose_layout(config, train.packed_forward, train.share_prompt, kernel)
    return "; ".join([f"forward layout: {choice.layout}", *choice.fallbacks])


def reference_line(model: Any, train: Any) -> str:
    if model.use_peft and not model.ref_model_name_or_path:
        return "the base model with the LoRA adapter disabled (no second copy)"
    source = model.ref_model_name_or_path or f"{model.model_name_or_path} as loaded"
    if train.precompute_ref_log_probs:
        return f"log-probs of {source} computed once before training (cached on disk)"
    return f"a frozen copy of {source} run at every step"


def dry_run_stage(name: str, argv: list[str], launch: LaunchSettings | None = None) -> list[str]:
    """`zephyr STAGE RECIPE [overrides] --dry-run` (a training stage, aif or eval): resolve and check the recipe, print what the stage
    would do, load and run nothing. Local paths must exist (there is no earlier stage to write them)."""
    from zephyr.launch import stage_command

    configs = resolve(name, argv)
    check_paths(name, configs, [])
    lines = [f"zephyr {name} (dry run): recipe resolved and checked; nothing was loaded or run",
             f"  command: {' '.join(stage_command(name, argv, launch))}",
             f"  outputs: {configs[-1].output_dir}", *(f"  {line}" for line in describe(name, configs, argv, launch))]
    print("\n".join(lines))
    return lines


def runs_local_models(cfg: Any) -> bool:
    """Whether an AIF or eval stage loads models itself (transformers or vLLM), so that more GPUs mean more speed."""
    endpoints = getattr(cfg, "generators", None) or getattr(cfg, "models", [])
    judge_local = cfg.judge.type in ("llm", "reward_model") and cfg.judge.capabilities.local
    return judge_local or any(e.capabilities.local for e in endpoints)


def gpus_per_worker(cfg: Any) -> int:
    """GPUs one AIF or eval worker needs: the largest vLLM tensor_parallel_size among its models."""
    endpoints = [*(getattr(cfg, "generators", None) or getattr(cfg, "models", [])), cfg.judge]
    return max(e.gpus for e in endpoints)
