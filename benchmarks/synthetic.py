"""What the benchmarks share: UltraFeedback-like preference rows, Mistral's real tokenizer, a real-token counter.

Plain Python and JSON only (no `datasets`), so the GPU check kit can build its inputs on a machine that lacks it.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

from zephyr.embedded.tasks import WORDS


def preference_rows(pairs: int, seed: int = 0, max_words: int = 300) -> list[dict]:
    """Conversational preference rows whose prompt and answer lengths have UltraFeedback's long tail (log-normal
    word counts: prompts median ~70 words, answers ~150), capped at `max_words` so a pair fits 1024 tokens."""
    rng = random.Random(seed)

    def text(median: float, sigma: float) -> str:
        n = max(3, min(max_words, int(rng.lognormvariate(math.log(median), sigma))))
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return [{"prompt": [{"role": "user", "content": text(70, 0.9)}],
             "chosen": [{"role": "assistant", "content": text(150, 0.8)}],
             "rejected": [{"role": "assistant", "content": text(150, 0.8)}]} for _ in range(pairs)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def save_mistral_tokenizer(folder: Path) -> Path:
    """Mistral-7B v0.1's 32k tokenizer (from the mistral-common package) saved as a fast tokenizer folder, which
    loads with `tokenizers` alone: no sentencepiece conversion where it is used."""
    from zephyr.embedded.build import mistral_tokenizer

    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = mistral_tokenizer(staging)
    tokenizer.save_pretrained(str(staging))
    (staging / "tokenizer.model").unlink(missing_ok=True)  # the fast tokenizer.json is all that is needed
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def count_real_tokens(trainer) -> list[int]:
    """Per training batch, its real (non-padding) tokens: wraps the trainer's collator; fills as it trains."""
    tokens: list[int] = []
    collate = trainer.data_collator

    def counting_collate(rows):
        batch = collate(rows)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collate
    return tokens
