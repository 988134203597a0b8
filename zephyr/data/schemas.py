"""Recognise the dataset schemas users bring (the hub layouts: messages, prompt/chosen/rejected, UltraFeedback) and convert each row to one canonical form.

SFT rows become {"messages": [...]}; preference rows become TRL's explicit conversational form
{"prompt": [...], "chosen": [assistant message], "rejected": [assistant message]}; unpaired rows (KTO) become
{"prompt": [...], "completion": [assistant message], "label": bool}. A source of pairs read as unpaired rows is
converted as pairs, then split in two (zephyr/data/pipeline.py `unpair`).
"""

from __future__ import annotations

from typing import Any, Literal

from datasets import Features, List, Value

Kind = Literal["sft", "preference", "unpaired"]
PAIR_SCHEMAS = ("explicit_prompt", "implicit_prompt")

MESSAGES = List({"role": Value("string"), "content": Value("string")})


def canonical_features(kind: Kind) -> Features:
    """The columns of a canonical row, as `convert_row` returns it (in that order)."""
    if kind == "unpaired":
        return Features({"prompt": MESSAGES, "completion": MESSAGES, "label": Value("bool")})
    columns = ("messages",) if kind == "sft" else ("prompt", "chosen", "rejected")
    return Features({column: MESSAGES for column in columns})


def row_kind(kind: Kind, schema: str) -> Kind:
    """The canonical form a source's rows are converted to: pairs stay pairs until they are split."""
    return "preference" if kind == "unpaired" and schema in PAIR_SCHEMAS else kind


class RowError(ValueError):
    """One row cannot be used; the message says why."""


def detect_schema(columns: list[str], kind: Kind) -> str:
    """Name the schema of a dataset from its columns, or raise RowError listing what is accepted."""
    cols = set(columns)
    if kind == "sft":
        if "messages" in cols:
            return "messages"
        if {"instruction", "output"} <= cols:
            return "alpaca"
        if {"prompt", "completion"} <= cols:
            return "prompt_completion"
        if {"chosen"} <= cols:
            return "chosen_as_sft"
        raise RowError(
            f"columns {sorted(cols)} match no SFT schema: expected 'messages' (UltraChat), 'instruction'/'output' "
            "(Alpaca) or 'prompt'/'completion'"
        )
    if kind == "unpaired" and {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    if {"chosen", "rejected"} <= cols:
        return "explicit_prompt" if "prompt" in cols else "implicit_prompt"
    if {"instruction", "completions"} <= cols:
        raise RowError(
            "this is raw UltraFeedback (instruction + rated completions): binarize it first with `zephyr binarize "
            "--source DATASET --output_dir DIR` (then dataset_name: DIR), or use a binarized version (chosen/rejected)"
        )
    unpaired = "; or 'prompt', 'completion' and 'label' (TRL's unpaired format)" if kind == "unpaired" else ""
    raise RowError(
        f"columns {sorted(cols)} match no preference schema: expected 'chosen' and 'rejected' (with or without "
        f"'prompt'), as in ultrafeedback_binarized or TRL's preference formats{unpaired}"
    )


def convert_row(row: dict[str, Any], schema: str) -> dict[str, Any]:
    if schema == "messages":
        return {"messages": _messages(row["messages"], "messages")}
    if schema == "chosen_as_sft":
        return {"messages": _messages(row["chosen"], "chosen")}
    if schema == "alpaca":
        instruction, extra = _text(row.get("instruction"), "instruction"), row.get("input") or ""
        if not instruction.strip():
            raise RowError("empty 'instruction'")
        if not isinstance(extra, str):
            raise RowError(f"'input' must be a string, got {type(extra).__name__}")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return {"messages": [_msg("user", user), _msg("assistant", _text(row.get("output"), "output"))]}
    if schema == "prompt_completion":
        prompt, completion = row["prompt"], row["completion"]
        prompt = _messages(prompt, "prompt") if isinstance(prompt, list) else [_msg("user", _text(prompt, "prompt"))]
        completion = (
            _messages(completion, "completion")
            if isinstance(completion, list)
            else [_msg("assistant", _text(completion, "completion"))]
        )
        return {"messages": prompt + completion}
    if schema in PAIR_SCHEMAS:
        return _preference(row)
    if schema == "unpaired":
        return _unpaired(row)
    raise RowError(f"unknown schema {schema!r}")


def _preference(row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str):
            raise RowError("string 'chosen'/'rejected' need a string 'prompt' column")
        user = [_msg("user", _text(prompt, "prompt"))]
        return {"prompt": user, "chosen": [_msg("assistant", chosen)], "rejected": [_msg("assistant", rejected)]}
    chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    if isinstance(prompt, list):  # explicit conversational: chosen/rejected hold only the answers
        prompt_msgs = _messages(prompt, "prompt")
        if len(chosen) == 1 and len(rejected) == 1:
            return {"prompt": prompt_msgs, "chosen": chosen, "rejected": rejected}
    # Whole conversations (ultrafeedback_binarized, implicit prompt): the shared prefix is the prompt.
    if len(chosen) < 2 or len(rejected) < 2:
        raise RowError("'chosen' and 'rejected' must be conversations ending with an assistant message")
    if chosen[:-1] != rejected[:-1]:
        raise RowError("'chosen' and 'rejected' do not share the same prompt messages")
    if isinstance(prompt, str) and prompt.strip() and chosen[-2]["content"].strip() != prompt.strip():
        raise RowError("'prompt' differs from the last user message of 'chosen'")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def _unpaired(row: dict[str, Any]) -> dict[str, Any]:
    """TRL's unpaired format, standard (strings) or conversational (message lists)."""
    prompt, completion, label = row.get("prompt"), row.get("completion"), row.get("label")
    if not isinstance(label, bool):
        raise RowError(f"'label' must be true (desirable) or false (undesirable), got {label!r}")
    prompt = _messages(prompt, "prompt") if isinstance(prompt, list) else [_msg("user", _text(prompt, "prompt"))]
    completion = (_messages(completion, "completion") if isinstance(completion, list)
                  else [_msg("assistant", _text(completion, "completion"))])
    return {"prompt": prompt, "completion": completion, "label": label}


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RowError(f"'{name}' must be a list of {{role, content}} messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"'{name}'[{i}] must be a {{role, content}} message, got {m!r:.80}")
        out.append(_msg(m["role"], m["content"], f"{name}[{i}]"))
    return out


def _msg(role: Any, content: Any, where: str = "message") -> dict[str, str]:
    if not isinstance(role, str):
        raise RowError(f"{where}: role must be a string, got {role!r}")
    if isinstance(content, list):  # OpenAI-style content parts, as exported chat data often has them
        content = text_of_parts(content, f"'{where}.content'")
    return {"role": role, "content": _text(content, f"{where}.content")}


def text_of_parts(parts: list[Any], where: str) -> str:
    """A message's content given as OpenAI-style parts ([{"type": "text", "text": ...}, ...]): the text parts
    joined by newlines. Any other part (an image, audio) is refused: the models trained here read text only."""
    texts = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            got = f"a part of type {kind!r}" if kind else f"{part!r:.60}"
            raise RowError(f"{where}[{i}]: expected a text part {{\"type\": \"text\", \"text\": ...}}, got {got}; "
                           "only text content can be trained on")
        texts.append(part["text"])
    return "\n".join(texts)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"'{name}' must be a string, got {type(value).__name__}")
    return value
