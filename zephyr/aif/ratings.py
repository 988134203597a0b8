"""Ratings that already exist (raw UltraFeedback, or any rows in its layout) to preference pairs, through the
same binarization settings as AIF's own ratings: `zephyr binarize`.

A row is an instruction with rated completions (openbmb/UltraFeedback's layout):

    {"instruction": "...",                       # or "prompt"
     "completions": [{"model": "...", "response": "...",
                      "annotations": {"helpfulness": {"Rating": "4", "Rationale": "..."}, ...},  # 1-5 or "N/A"
                      "overall_score": 7.5},     # 1-10 (the critique score); optional
                     ...]}

`binarization.score` picks the score: `mean_aspects` (mean of the aspect ratings, N/A left out: Argilla),
`overall` (overall_score: HuggingFaceH4's ultrafeedback_binarized), or `reward` (a plain numeric `score` per
completion). `rejected: random | lowest | random_lower` and `ties` as in AIF. The output is the
ultrafeedback_binarized schema in `<output_dir>/data/{train,test}_prefs-00000-of-00001.parquet`.

Per-turn preferences: a dialogue whose assistant messages carry rated alternatives makes one pair per rated turn,
its prompt the dialogue up to that turn (ids `<prompt_id>#turn<k>` from the second user turn on):

    {"prompt_id": "d1",                          # optional: default a hash of the first message
     "messages": [{"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "completions": [...]},   # rated like the above
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "completions": [...]}]}
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zephyr.aif.binarize import Candidate, RatedPrompt, binarize
from zephyr.aif.config import BinarizationConfig
from zephyr.configs import DatasetSource
from zephyr.data.loading import DataError, load_source

logger = logging.getLogger("zephyr.binarize")


@dataclass
class RatingsConfig:
    source: str = field(metadata={"help": "Rows with rated completions: hub id (openbmb/UltraFeedback), file or folder."})
    output_dir: str = field(metadata={"help": "Where data/{train,test}_prefs parquet files and summary.json go."})
    split: str = field(default="train", metadata={"help": "Split of `source`."})
    config: str | None = field(default=None, metadata={"help": "Dataset config name of `source`."})
    max_rows: int | None = field(default=None, metadata={"help": "Use only the first N rows."})
    binarization: BinarizationConfig = field(default_factory=BinarizationConfig)


def rating_value(value: Any, where: str) -> float | None:
    """An aspect rating "1".."5" (or a number) as a float; "N/A" (honesty may be) as None."""
    if isinstance(value, str) and value.strip().upper() == "N/A":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: expected a rating 1-5 or N/A, got {value!r}") from None
    if not 1 <= number <= 5:
        raise DataError(f"{where}: rating {number:g} is outside 1-5")
    return number


def judgment_of(completion: dict[str, Any], where: str) -> dict[str, Any]:
    """The judgment dict AIF's binarization reads, from a completion's own ratings."""
    annotations = completion.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise DataError(f"{where}: annotations: expected a mapping of aspect -> {{Rating, Rationale}}")
    ratings = {aspect: rating_value(a.get("Rating") if isinstance(a, dict) else a, f"{where}: {aspect}")
               for aspect, a in annotations.items()}
    judgment: dict[str, Any] = {"ratings": ratings}
    for key, name in (("overall_score", "overall"), ("score", "reward")):
        if completion.get(key) is not None:
            try:
                judgment[name] = float(completion[key])
            except (TypeError, ValueError):
                raise DataError(f"{where}: {key}: expected a number, got {completion[key]!r}") from None
    return judgment


def rated_answers(completions: Any, where: str) -> list[Candidate]:
    if not isinstance(completions, list):
        raise DataError(f"{where}: expected completions, a list of {{model, response, annotations, overall_score}}")
    out = []
    for i, c in enumerate(completions):
        if not isinstance(c, dict) or not isinstance(c.get("response"), str):
            raise DataError(f"{where}: completions[{i}]: expected a mapping with a response string")
        out.append(Candidate(c["response"], str(c.get("model") or f"completion {i}"),
                             judgment_of(c, f"{where}: completions[{i}]")))
    return out


def text_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rated_prompts_of(row: dict[str, Any], where: str) -> list[RatedPrompt]:
    """One rated prompt for an UltraFeedback row; one per rated assistant turn for a dialogue (`messages`)."""
    if row.get("messages") is not None and row.get("completions") is None:
        return rated_turns(row, where)
    prompt = row.get("instruction") if row.get("instruction") is not None else row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: expected an instruction (or prompt) string")
    prompt_id = str(row.get("prompt_id") or text_id(prompt))
    return [RatedPrompt(prompt, prompt_id, rated_answers(row.get("completions"), where))]


def rated_turns(row: dict[str, Any], where: str) -> list[RatedPrompt]:
    """A dialogue whose assistant messages may carry `completions` (rated alternatives to that turn): one rated
    prompt per such turn, its prompt the dialogue up to that turn (with the dialogue's own replies before it)."""
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: messages: expected a list of {{role, content}} messages")
    out: list[RatedPrompt] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}]: expected a {{role, content}} message")
        if m.get("completions") is None:
            continue
        if m["role"] != "assistant" or i == 0 or messages[i - 1].get("role") != "user":
            raise DataError(f"{where}: messages[{i}]: completions belong on an assistant message that answers a "
                            "user message")
        history = [{"role": x["role"], "content": x["content"]} for x in messages[:i - 1]]
        base = str(row.get("prompt_id") or text_id(messages[0]["content"]))
        turn = sum(x.get("role") == "user" for x in messages[:i]) - 1  # which user turn this answers, from 0
        out.append(RatedPrompt(messages[i - 1]["content"], base if turn == 0 else f"{base}#turn{turn}",
                               rated_answers(m["completions"], f"{where}: messages[{i}]"), history))
    if not out:
        raise DataError(f"{where}: no assistant message carries completions (rated alternatives to that turn)")
    return out


def binarize_ratings(cfg: RatingsConfig) -> dict[str, Any]:
    from zephyr.aif.pipeline import no_pairs_text, write_dataset

    ds = load_source(DatasetSource(id=cfg.source, config=cfg.config, split=cfg.split))
    columns = set(ds.column_names)
    if not ({"completions"} <= columns and {"instruction", "prompt"} & columns) and "messages" not in columns:
        raise DataError(f"{cfg.source} [{cfg.split}]: columns {sorted(columns)}: expected instruction (or prompt) "
                        "and completions, as in openbmb/UltraFeedback, or dialogues (messages) whose assistant "
                        "turns carry rated completions (see `zephyr binarize --help`)")
    if cfg.max_rows:
        ds = ds.select(range(min(cfg.max_rows, len(ds))))
    prompts = [p for i, row in enumerate(ds) for p in rated_prompts_of(row, f"{cfg.source} [{cfg.split}] row {i}")]
    rows, dropped = binarize(prompts, cfg.binarization)
    summary = {"source": cfg.source, "split": cfg.split, "rows": len(ds), "rated_prompts": len(prompts),
               "pairs": len(rows),
               "dropped": dict(dropped), "binarization": asdict(cfg.binarization)}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise DataError(f"{cfg.source}: {no_pairs_text(len(prompts), dropped, None)}; the previous dataset in "
                        f"{out}, if any, is kept")
    write_dataset(out, rows, cfg.binarization)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("%d pairs from %d rated prompts in %d rows of %s (dropped %s); dataset in %s (load with "
                "dataset_name: %s)", len(rows), len(prompts), len(ds), cfg.source, dict(dropped) or "none",
                out / "data", out)
    return summary


def main(argv: list[str]) -> dict[str, Any]:
    from zephyr.recipe import parse_stage_args

    (cfg,) = parse_stage_args(argv, (RatingsConfig,), "binarize")
    return binarize_ratings(cfg)
