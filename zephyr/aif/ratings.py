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
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zephyr.aif.binarize import Candidate, binarize
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


def candidates_of(row: dict[str, Any], where: str) -> tuple[str, str, list[Candidate]]:
    prompt = row.get("instruction") if row.get("instruction") is not None else row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: expected an instruction (or prompt) string")
    completions = row.get("completions")
    if not isinstance(completions, list):
        raise DataError(f"{where}: expected completions, a list of {{model, response, annotations, overall_score}}")
    out = []
    for i, c in enumerate(completions):
        if not isinstance(c, dict) or not isinstance(c.get("response"), str):
            raise DataError(f"{where}: completions[{i}]: expected a mapping with a response string")
        out.append(Candidate(c["response"], str(c.get("model") or f"completion {i}"),
                             judgment_of(c, f"{where}: completions[{i}]")))
    prompt_id = str(row.get("prompt_id") or hashlib.sha256(prompt.encode("utf-8")).hexdigest())
    return prompt, prompt_id, out


def binarize_ratings(cfg: RatingsConfig) -> dict[str, Any]:
    from zephyr.aif.pipeline import no_pairs_text, write_dataset

    ds = load_source(DatasetSource(id=cfg.source, config=cfg.config, split=cfg.split))
    if not {"completions"} <= set(ds.column_names) or not {"instruction", "prompt"} & set(ds.column_names):
        raise DataError(f"{cfg.source} [{cfg.split}]: columns {sorted(ds.column_names)}: expected instruction (or "
                        "prompt) and completions, as in openbmb/UltraFeedback (see `zephyr binarize --help`)")
    if cfg.max_rows:
        ds = ds.select(range(min(cfg.max_rows, len(ds))))
    prompts = [candidates_of(row, f"{cfg.source} [{cfg.split}] row {i}") for i, row in enumerate(ds)]
    rows, dropped = binarize(prompts, cfg.binarization)
    summary = {"source": cfg.source, "split": cfg.split, "rows": len(prompts), "pairs": len(rows),
               "dropped": dict(dropped), "binarization": asdict(cfg.binarization)}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise DataError(f"{cfg.source}: {no_pairs_text(len(prompts), dropped, None)}; the previous dataset in "
                        f"{out}, if any, is kept")
    write_dataset(out, rows, cfg.binarization)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("%d pairs from %d rows of %s (dropped %s); dataset in %s (load with dataset_name: %s)", len(rows),
                len(prompts), cfg.source, dict(dropped) or "none", out / "data", out)
    return summary


def main(argv: list[str]) -> dict[str, Any]:
    from zephyr.stages.common import parse_stage_args

    (cfg,) = parse_stage_args(argv, (RatingsConfig,), "binarize")
    return binarize_ratings(cfg)
