"""What values a recipe key accepts, in one table, checked when a recipe is read (so `--dry-run` catches them).

A value of the right type can still be useless or harmful: `learning_rate: -1` crashes the optimizer after the
model has loaded, `beta: -0.1` trains silently towards the rejected answers, `max_length: 0` reads as every row
being too long. `zephyr.recipe.build_configs` casts each key to its type, then checks it here:

- `RULES`: key -> the range it accepts (with the words the error shows);
- `ALIASES`: spellings read as another value (`dtype: fp32` is `float32`, `dtype: null` the default);
- `check_together`: rules between keys of one config (`loss_weights` has one weight per `loss_type`);
- `check_recipe`: rules between configs (required keys; an eval set when `eval_strategy` asks for one).

Only standard-library imports: zephyr.recipe imports this module, and recipe loading must stay light.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zephyr.errors import RecipeError

logger = logging.getLogger(__name__)

# TRL 1.16's documented loss types (DPOConfig.loss_type, a list; SFTConfig.loss_type, one name).
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
SFT_LOSS_TYPES = ("nll", "dft")
# TRL 1.16 CPOConfig.loss_type (trl/experimental/cpo/cpo_config.py) and KTOConfig.loss_type (trl/trainer/kto_config.py),
# copied because this module must not import TRL; tests/test_pref_stages.py compares them with TRL's own lists.
CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo", "alphapo")
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# transformers 5.23 attention implementations (ALL_ATTENTION_FUNCTIONS plus eager); a hub kernel ("org/name") too.
ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4",
             "paged|eager")


def above(low: float) -> Callable[[Any], bool]:
    return lambda v: v > low


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def below_one_from(low: float) -> Callable[[Any], bool]:
    return lambda v: low <= v < 1


def or_null(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in choices


def each_one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: bool(v) and all(item in choices for item in v)


def split_name(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def attention(v: Any) -> bool:
    return v is None or v in ATTENTION or (isinstance(v, str) and v.count("/") == 1 and not v.startswith("/"))


@dataclass(frozen=True)
class Rule:
    key: str
    expected: str  # the error reads "key 'KEY': expected EXPECTED, got VALUE"
    ok: Callable[[Any], bool]
    only_for: tuple[str, ...] = ()  # config classes (by name, anywhere in the class's bases) it applies to; () all


RULES: tuple[Rule, ...] = (
    # optimization
    Rule("learning_rate", "a number > 0 (0 would train nothing)", above(0)),
    Rule("num_train_epochs", "a number > 0", above(0)),
    Rule("max_steps", "a number of steps >= 1, or -1 to train num_train_epochs", lambda v: v == -1 or v >= 1),
    Rule("warmup_steps", "a number >= 0 (below 1: a fraction of the training steps)", at_least(0)),
    Rule("weight_decay", "a number >= 0", at_least(0)),
    Rule("max_grad_norm", "a number >= 0 (0: no clipping)", or_null(at_least(0))),
    Rule("per_device_train_batch_size", "an integer >= 1", at_least(1)),
    Rule("per_device_eval_batch_size", "an integer >= 1", at_least(1)),
    Rule("gradient_accumulation_steps", "an integer >= 1", at_least(1)),
    Rule("logging_steps", "a number > 0 (below 1: a fraction of the training steps)", above(0)),
    Rule("eval_steps", "a number > 0, or null", or_null(above(0))),
    Rule("save_steps", "a number > 0", above(0)),
    Rule("dataset_num_proc", "an integer >= 1, or null", or_null(at_least(1))),
    # sequence length
    Rule("max_length", "a number of tokens >= 1, or null for no limit", or_null(at_least(1))),
    Rule("ref_token_budget", "a number of tokens >= 1, or null for the training batch size", or_null(at_least(1))),
    # DPO
    Rule("beta", "a number > 0 (the strength of the pull towards the reference; Zephyr: 0.01 to 0.1)", above(0),
         only_for=("DPOConfig",)),
    Rule("loss_type", f"one or more of {', '.join(DPO_LOSS_TYPES)} (TRL 1.16 DPO loss types)",
         each_one_of(DPO_LOSS_TYPES), only_for=("DPOConfig",)),
    Rule("loss_type", f"one of {', '.join(SFT_LOSS_TYPES)} (TRL 1.16 SFT loss types)", one_of(SFT_LOSS_TYPES),
         only_for=("SFTConfig",)),
    Rule("label_smoothing", "a number in [0, 0.5)", lambda v: 0 <= v < 0.5, only_for=("DPOConfig", "CPOConfig")),
    # ORPO, SimPO/CPO, KTO, reward model
    Rule("beta", "a number > 0 (lambda, the weight of the odds-ratio term; ORPO paper and handbook: 0.05 to 0.25)",
         above(0), only_for=("ORPOConfig",)),
    Rule("beta", "a number > 0 (the scale of the reward difference; SimPO: 2.0 to 2.5, CPO: 0.1)", above(0),
         only_for=("CPOConfig",)),
    Rule("loss_type", f"one of {', '.join(CPO_LOSS_TYPES)} (TRL 1.16 CPO loss types)", one_of(CPO_LOSS_TYPES),
         only_for=("CPOConfig",)),
    Rule("cpo_alpha", "a number >= 0 (the weight of the NLL term: 0 for SimPO, 1.0 for CPO)", at_least(0),
         only_for=("CPOConfig",)),
    Rule("simpo_gamma", "a margin >= 0, or null for gamma_beta_ratio x beta", or_null(at_least(0)),
         only_for=("CPOConfig",)),
    Rule("gamma_beta_ratio", "a number >= 0 (SimPO: 0.5 to 0.8)", at_least(0), only_for=("CPOConfig",)),
    Rule("beta", "a number > 0 (the strength of the pull towards the reference; KTO paper: 0.1)", above(0),
         only_for=("KTOConfig",)),
    Rule("loss_type", f"one of {', '.join(KTO_LOSS_TYPES)} (TRL 1.16 KTO loss types)", one_of(KTO_LOSS_TYPES),
         only_for=("KTOConfig",)),
    Rule("desirable_weight", "a number > 0", above(0), only_for=("KTOConfig",)),
    Rule("undesirable_weight", "a number > 0", above(0), only_for=("KTOConfig",)),
    Rule("center_rewards_coefficient", "a number >= 0, or null for none", or_null(at_least(0)),
         only_for=("RewardConfig",)),
    Rule("model_init_kwargs", "null: zephyr loads the model itself, from the model keys (dtype, attn_implementation, "
         "...)", lambda v: v is None, only_for=("ORPOConfig", "CPOConfig")),
    # model
    Rule("dtype", f"one of {', '.join(DTYPES)}", one_of(DTYPES), only_for=("ModelArguments",)),
    Rule("attn_implementation", f"null or one of {', '.join(ATTENTION)}, or a hub kernel such as "
         "kernels-community/flash-attn2", attention, only_for=("ModelArguments",)),
    Rule("bnb_4bit_quant_type", "one of nf4, fp4", one_of(("nf4", "fp4")), only_for=("ModelArguments",)),
    Rule("lora_r", "an integer >= 1", at_least(1), only_for=("ModelArguments",)),
    Rule("lora_alpha", "a number > 0", above(0), only_for=("ModelArguments",)),
    Rule("lora_dropout", "a number in [0, 1)", below_one_from(0), only_for=("ModelArguments",)),
    # data
    Rule("dataset_train_split", "a split name such as train or train_sft", split_name, only_for=("DataArguments",)),
    Rule("dataset_test_split", "a split name such as test or test_sft, or null for none", or_null(split_name),
         only_for=("DataArguments",)),
    Rule("max_train_samples", "an integer >= 1, or null for every row", or_null(at_least(1))),
    Rule("max_eval_samples", "an integer >= 1, or null for every row", or_null(at_least(1))),
    Rule("decontamination_ngram", "an integer >= 1", at_least(1)),
)

# key -> {spelling: the value it stands for}; each use is logged.
ALIASES: dict[str, dict[Any, Any]] = {
    "dtype": {None: "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"},  # null: handbook recipes
}


def class_names(cls: type) -> set[str]:
    return {c.__name__ for c in cls.__mro__}


def rules_for(cls: type, key: str) -> list[Rule]:
    names = class_names(cls)
    return [r for r in RULES if r.key == key and (not r.only_for or names & set(r.only_for))]


def check_value(cls: type, key: str, value: Any, where: str = "recipe") -> Any:
    """The value to use for `key` of `cls` (an alias resolved, and logged as coming from `where`), or a
    RecipeError saying what range the key takes."""
    aliases = ALIASES.get(key, {}) if rules_for(cls, key) else {}
    if _hashable(value) and value in aliases:
        meant = aliases[value]
        logger.warning("%s: %s: %s read as %s", where, key, _shown(value), _shown(meant))
        value = meant
    for rule in rules_for(cls, key):
        try:
            ok = rule.ok(value)
        except TypeError:  # e.g. None where a number belongs: the type said it may be null, the rule does not
            ok = False
        if not ok:
            raise RecipeError(f"key '{key}': expected {rule.expected}, got {_shown(value)}")
    return value


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _shown(value: Any) -> str:
    return "null" if value is None else repr(value)


def value_or_default(cls: type, kwargs: dict[str, Any], key: str) -> Any:
    """kwargs[key], else the dataclass default of `key` (None if `cls` has no such field)."""
    if key in kwargs:
        return kwargs[key]
    for f in dataclasses.fields(cls):
        if f.name == key:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def check_together(cls: type, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(key, problem) for keys of one config that cannot go together, else None. Checked before the config is
    built, because TRL and transformers raise their own, vaguer, errors for these in __post_init__."""
    if "DPOConfig" in class_names(cls):
        losses = value_or_default(cls, kwargs, "loss_type")
        weights = value_or_default(cls, kwargs, "loss_weights")
        losses = [losses] if isinstance(losses, str) else losses
        if weights is not None and len(weights) != len(losses):
            return "loss_weights", (f"key 'loss_weights': expected {len(losses)} weight(s), one per loss_type "
                                    f"{losses}, got {weights}")
    if "CPOConfig" in class_names(cls) and kwargs.get("simpo_gamma") is not None and "gamma_beta_ratio" in kwargs:
        return "simpo_gamma", ("keys 'simpo_gamma' and 'gamma_beta_ratio': two spellings of one margin "
                               "(simpo_gamma = gamma_beta_ratio x beta): set one")
    if "KTOConfig" in class_names(cls) and value_or_default(cls, kwargs, "loss_type") == "kto":
        # TRL estimates KTO's KL term from each row's neighbours in a fixed-order batch
        sampling = str(value_or_default(cls, kwargs, "train_sampling_strategy"))
        if sampling != "sequential":
            return "train_sampling_strategy", ("key 'train_sampling_strategy': expected sequential with loss_type "
                                               f"kto (its KL estimate pairs each row with its batch neighbours), got "
                                               f"{sampling!r}")
        if value_or_default(cls, kwargs, "per_device_train_batch_size") < 2:
            return "per_device_train_batch_size", ("key 'per_device_train_batch_size': expected 2 or more with "
                                                   "loss_type kto (its KL estimate needs other rows in the batch)")
    return None


# ------------------------------------------------------------------------------------------ between configs
def find(configs: tuple[Any, ...], attribute: str) -> Any:
    return next((c for c in configs if hasattr(c, attribute)), None)


def check_recipe(configs: tuple[Any, ...], source: str, stage: str, given: set[str] | frozenset = frozenset()) -> None:
    """Checks that need several configs of a training stage: the keys it cannot run without, an eval set when
    eval_strategy asks for one, a chat template assistant_only_loss can use. Other stages' configs have none of
    these keys and pass untouched. `given`: the keys the recipe and command line set (the rest are defaults)."""
    model, data, train = find(configs, "model_name_or_path"), find(configs, "dataset_mixture"), \
        find(configs, "eval_strategy")
    missing = []
    if model is not None and not model.model_name_or_path:
        missing.append("model_name_or_path (a hub id or a local model folder)")
    if data is not None and not (data.dataset_name or data.dataset_mixture):
        missing.append("dataset_name or dataset_mixture (the training data)")
    if missing:
        raise RecipeError(f"{source}: missing required key(s) {', '.join(missing)} (see `zephyr {stage} --help` "
                          "for every key)")
    if data is not None and train is not None and strategy_name(train.eval_strategy) != "no":
        reason = known_missing_eval_set(data)
        if reason:
            raise RecipeError(no_eval_set_message(train.eval_strategy, reason))
    if model is not None and train is not None:
        fit_assistant_only_loss(model, train, given, source)


GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


def fit_assistant_only_loss(model: Any, train: Any, given: set[str] | frozenset, source: str) -> None:
    """assistant_only_loss (zephyr's default) needs {% generation %} markers in the chat template; handbook
    recipes bring a template without them and trained on every token. Keep their behaviour when the recipe left
    assistant_only_loss to the default; refuse when it asked for it."""
    if not getattr(train, "assistant_only_loss", False) or not model.chat_template:
        return
    if GENERATION_MARKER.search(model.chat_template):
        return
    if "assistant_only_loss" in given:
        raise RecipeError(f"{source}: key 'assistant_only_loss': true needs {{% generation %}} markers around the "
                          "assistant's text in chat_template, and the recipe's template has none: set "
                          "assistant_only_loss: false (loss on every token), or add the markers")
    logger.warning("%s: chat_template has no {%% generation %%} markers, which assistant_only_loss needs: the loss "
                   "covers every token, as in alignment-handbook recipes (a template with the markers, such as "
                   "zephyr's own when chat_template is unset, trains on the assistant turns only)", source)
    train.assistant_only_loss = False


def strategy_name(strategy: Any) -> str:
    return str(getattr(strategy, "value", strategy))


def known_missing_eval_set(data: Any) -> str | None:
    """Why the data has no eval set, when that is known without loading it; None when it has one or may have."""
    mixture = data.dataset_mixture
    if isinstance(mixture, dict):
        entries = mixture.get("datasets") or []
        if any(isinstance(e, dict) and e.get("role") == "test" for e in entries) or mixture.get("test_split_size"):
            return None
        return "dataset_mixture has no source with role: test and no test_split_size"
    if not data.dataset_name:
        return None
    if data.dataset_test_split is None:
        return "dataset_test_split is null"
    if is_one_split(Path(data.dataset_name).expanduser()):
        return f"dataset_name {data.dataset_name} is a single file (one split: the training rows)"
    return None


def no_eval_set_message(strategy: Any, reason: str) -> str:
    return (f"eval_strategy: {strategy_name(strategy)} needs an eval set, but {reason}: set eval_strategy: no, or "
            "give the data an eval split (dataset_test_split, a dataset_mixture source with role: test, or "
            "dataset_mixture.test_split_size to hold out some training rows)")


def is_one_split(path: Path) -> bool:
    """A data file, or a `save_to_disk` folder of one Dataset: data with exactly one split."""
    return path.is_file() or ((path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").exists())
