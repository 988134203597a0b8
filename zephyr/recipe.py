"""Recipes: YAML files (plus command-line overrides) mapped onto typed config dataclasses.

Why not `transformers.HfArgumentParser`: it cannot say which file line is broken, does not suggest the key you
meant, casts CLI strings but not YAML values (`learning_rate: 2e-5` is a *string* to YAML 1.1), and knows
nothing of alignment-handbook recipes. One casting function here serves YAML and CLI alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from zephyr.compat import describe_sources, translate_legacy_keys
from zephyr.errors import RecipeError
from zephyr.rules import check_recipe, check_together, check_value, is_one_split

__all__ = ["RecipeError", "build_configs", "cast_value", "load_recipe", "parse_overrides", "read_yaml"]

logger = logging.getLogger(__name__)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file not found: {path}")
    raw = path.read_bytes()
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(f"{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise RecipeError(
            f"{path}:{line}: not valid UTF-8 text ({err.reason} at byte {err.start}): save the file as UTF-8"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of key: value, got {type(data).__name__}")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last one silently, so a
    recipe that sets `learning_rate` twice would train with whichever came last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first on line {first_line[key]}): keep one",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_KEY_EQUALS = re.compile(r"^[A-Za-z_][\w.-]*=")


def parse_overrides(args: list[str]) -> dict[str, str | None]:
    """`--key value`, `--key=value` and `key=value`; a bare `--flag` means true."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key = arg[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--") and not _KEY_EQUALS.match(args[i + 1]):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        elif "=" in arg:
            key, value = arg.split("=", 1)
        else:
            raise RecipeError(f"Cannot read override {arg!r}: use --key value, --key=value or key=value")
        out[key.replace("-", "_")] = value
        i += 1
    return out


# ----------------------------------------------------------------------------------------------------- casting
_NONE_STRINGS = {"none", "null", "~", ""}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def cast_value(value: Any, tp: Any, key: str) -> Any:
    """Cast a YAML value or a CLI string to the annotated type `tp`; raise RecipeError naming `key` if it can't."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is typing.Any:
        return _parse_scalar(value) if isinstance(value, str) else value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) < len(typing.get_args(tp)) and (
            value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS)
        ):
            return None
        for option in _order_union(options, value):
            try:
                return cast_value(value, option, key)
            except RecipeError:
                pass
        if isinstance(value, bool) and any(_is_text_type(o) for o in options):
            raise _quoted_bool_error(key, value)
        raise RecipeError(f"key '{key}': expected {_type_name(tp)}, got {value!r}")
    if value is None:
        raise RecipeError(f"key '{key}': expected {_type_name(tp)}, got null")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise RecipeError(f"key '{key}': expected a mapping with keys {sorted(field_types(tp))}, got {value!r}")
        (config,) = build_configs(value, (tp,), source=f"key '{key}'")
        return config
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise RecipeError(f"key '{key}': expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            text = value.strip()
            try:
                value = yaml.safe_load(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
            except yaml.YAMLError:
                raise RecipeError(f"key '{key}': expected a list, got {value!r}") from None
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [cast_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise RecipeError(f"key '{key}': expected a mapping, got {value!r}") from None
        if not isinstance(value, dict):
            raise RecipeError(f"key '{key}': expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise RecipeError(f"key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise RecipeError(f"key '{key}': expected an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise RecipeError(f"key '{key}': expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise RecipeError(f"key '{key}': expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"key '{key}': expected a number, got {value!r}") from None
    if isinstance(value, bool) and _is_text_type(tp):
        raise _quoted_bool_error(key, value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise RecipeError(f"key '{key}': expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise RecipeError(f"key '{key}': expected one of {[e.value for e in tp]}, got {value!r}") from None
    return value


def _is_text_type(tp: Any) -> bool:
    return tp is str or (isinstance(tp, type) and issubclass(tp, enum.Enum))


def _quoted_bool_error(key: str, value: bool) -> RecipeError:
    return RecipeError(
        f"key '{key}': expected text, got the boolean {value!r} (YAML reads unquoted no/yes/on/off as booleans): "
        f'quote it, e.g. {key}: "no"'
    )


def _order_union(options: list, value: Any) -> list:
    """Try the option matching the value's own type first, strings last (everything casts to str)."""
    exact = [o for o in options if isinstance(o, type) and type(value) is o]
    if isinstance(value, str) and value.strip().startswith(("[", "{")):  # `[a, b]` / `{k: v}` as in YAML
        want = (list, tuple) if value.strip().startswith("[") else (dict,)
        exact = [o for o in options if o in want or typing.get_origin(o) in want]
    elif isinstance(value, str) and "," in value:  # `a,b`: the comma form of a list, where the key takes one
        exact = [o for o in options if o in (list, tuple) or typing.get_origin(o) in (list, tuple)]
    rest = sorted((o for o in options if o not in exact), key=lambda o: o is str)
    return exact + rest


def _parse_scalar(text: str) -> Any:
    """A CLI string for an untyped key: numbers, true/false, null and [..]/{..} are parsed; all else is text
    (unlike YAML, `no` and `on` stay strings)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in _NONE_STRINGS:
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    if text.strip().startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            pass
    return text


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# ----------------------------------------------------------------------------------------------------- loading
def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def check_known_keys(keys: Any, classes: tuple[type, ...], source: str) -> None:
    """Unknown keys are an error that names the key and the closest valid one."""
    known = set().union(*(field_types(cls) for cls in classes))
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"{source}: unknown key '{key}'{hint}")


def build_configs(values: dict[str, Any], classes: tuple[type, ...], source: str = "recipe",
                  origins: dict[str, str] | None = None, stage: str = "COMMAND") -> tuple[Any, ...]:
    """Instantiate each dataclass in `classes` from the keys it declares. A key declared by several (e.g. `seed`,
    `trust_remote_code`) goes to all of them. `origins` names where a key came from when not `source`."""
    check_known_keys(values, classes, source)
    origins = origins or {}
    configs = []
    for cls in classes:
        types_ = field_types(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in types_:
                continue
            where = origins.get(key, source)
            try:  # the type first, then the range it must be in (zephyr/rules.py)
                kwargs[key] = check_value(cls, key, cast_value(value, types_[key], key), where)
            except RecipeError as err:
                raise RecipeError(f"{where}: {err}") from None
        clash = check_together(cls, kwargs)
        if clash:
            key, problem = clash
            raise RecipeError(f"{origins.get(key, source)}: {problem}")
        required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING and f.name not in kwargs]
        if required:
            raise RecipeError(f"{source}: missing required key(s) {', '.join(required)} (see `zephyr {stage} --help` "
                              "for every key)")
        try:
            configs.append(cls(**kwargs))
        except (ValueError, TypeError) as err:
            raise RecipeError(f"{source}: invalid {cls.__name__}: {err}") from None
    return tuple(configs)


def load_recipe(
    path: str | Path | None, overrides: list[str] | dict[str, Any] | None, classes: tuple[type, ...], stage: str
) -> tuple[Any, ...]:
    """Read a YAML recipe, apply overrides (which win), translate legacy keys, build the config objects and check
    their values (zephyr/rules.py)."""
    source = str(path) if path else "command line"
    known = set().union(*(field_types(cls) for cls in classes))
    values = translate_legacy_keys(read_yaml(path) if path else {}, stage=stage, source=source, known=known)
    extra = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    extra = translate_legacy_keys(extra, stage=stage, source="command line", known=known)
    check_known_keys({k.split(".")[0] for k in extra}, classes, "command line")
    values, extra = command_line_data_wins(values, extra)
    for key, value in extra.items():
        set_dotted(values, key, value)
    origins = dict.fromkeys((k.split(".")[0] for k in extra), "command line")
    configs = build_configs(values, classes, source=source, origins=origins, stage=stage)
    check_recipe(configs, source, stage, given=set(values))
    return configs


def command_line_data_wins(values: dict[str, Any], extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A data source on the command line replaces the recipe file's, whichever form each has: without this,
    `--dataset_name DIR` on a handbook recipe (whose dataset_mixer became a dataset_mixture) is refused as
    "dataset_name and dataset_mixture, not both", though the user wrote no mixture.

    When the file's mixture reads one dataset (the handbook's: one id, several splits), the command line sets no
    split and the new dataset has splits (a folder or hub id, not a single file), the mixture is kept and pointed
    at the new dataset, so its splits, roles, weights and test_split_size still apply. Otherwise the mixture is
    dropped for dataset_name and its split keys."""
    given = {k.split(".")[0] for k in extra}
    mixture = values.get("dataset_mixture")
    name_given = "dataset_name" in given and str(extra.get("dataset_name")).strip().lower() not in _NONE_STRINGS
    if name_given and "dataset_mixture" not in given and mixture:
        values, extra = dict(values), dict(extra)
        del values["dataset_mixture"]
        entries = mixture.get("datasets") if isinstance(mixture, dict) else None
        ids = {e.get("id") for e in entries or [] if isinstance(e, dict)}
        name = extra["dataset_name"]
        if (len(ids) == 1 and not given & {"dataset_train_split", "dataset_test_split", "dataset_config"}
                and not is_one_split(Path(str(name)).expanduser())):  # a single file has no splits to keep
            del extra["dataset_name"]
            values.pop("dataset_name", None)
            moved = [{**e, "id": name} if isinstance(e, dict) else e for e in entries]
            values["dataset_mixture"] = {**mixture, "datasets": moved}
            logger.warning("command line: dataset_name %s replaces %s in the recipe's dataset_mixture, whose splits, "
                           "roles, weights and test_split_size stay: %s (set dataset_train_split/dataset_test_split "
                           "too to read dataset_name alone)", name, ids.pop(), describe_sources(moved))
        else:
            logger.warning("command line: dataset_name %s replaces the recipe's dataset_mixture (%s)", name,
                           describe_sources(entries or []))
    elif "dataset_mixture" in extra and values.get("dataset_name") and "dataset_name" not in given:
        values = dict(values)
        logger.warning("command line: dataset_mixture replaces the recipe's dataset_name %s",
                       values.pop("dataset_name"))
    return values, extra


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """`judge.max_retries=5` sets values["judge"]["max_retries"]; `generators.0.temperature` indexes a list."""
    *path, last = key.split(".")
    node: Any = values
    for i, part in enumerate(path):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"command line: '{key}': no item {part} in '{where}' (it has {len(node)})")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"command line: '{key}': '{where}' is not a mapping or list")
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"command line: '{key}': no item {last} (the list has {len(node)})")
        node[int(last)] = value
    else:
        node[last] = value


def parse_stage_args(argv: list[str], classes: tuple[type, ...], stage: str) -> tuple[Any, ...]:
    """argv = [RECIPE.yaml] [overrides...]; the recipe may be omitted if every key comes as an override."""
    if not argv:  # `zephyr aif` alone: say how to call it, not which of its many keys are missing
        raise RecipeError(f"no recipe given. usage: zephyr {stage} RECIPE.yaml [--key value ...]; see "
                          f"`zephyr {stage} --help` for every key")
    recipe = argv[0] if argv and not argv[0].startswith("-") and "=" not in argv[0] else None
    overrides = argv[1:] if recipe else argv
    configs = load_recipe(recipe, overrides, classes, stage)
    for config in configs:
        move_hub_token_to_environment(config)
    return configs


def move_hub_token_to_environment(config: Any) -> None:
    """A `hub_token` from the recipe leaves the config for this process's HF_TOKEN (inherited by its children).
    The Trainer pickles its arguments into every checkpoint (training_args.bin) and hands them to the dashboards;
    huggingface_hub reads HF_TOKEN just as well. Done when a stage starts, not when a config is built: building a
    config must not change the process."""
    if getattr(config, "hub_token", None):
        os.environ["HF_TOKEN"] = config.hub_token
        config.hub_token = None
