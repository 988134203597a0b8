"""The AIF stage: prompts -> completions -> judgments -> binarized pairs, crash-safe and resumable.

Every completion and judgment is appended to a JSONL store (flushed, fsync'ed) as soon as its batch is done,
keyed by prompt id, model, sample index and a hash of the settings that shape it. A rerun skips what is
stored: a crash loses at most the batch in flight, and no work is done twice. Work is cut into fixed batches
seeded by their own content, so a batch redone after a crash samples exactly what it would have.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from zephyr.aif import keys
from zephyr.aif.binarize import Candidate, RatedPrompt, binarize
from zephyr.aif.config import AIFConfig, BinarizationConfig, PromptSource
from zephyr.aif.judges import JudgeTask, make_judge
from zephyr.configs import DatasetSource
from zephyr.data.loading import DataError, load_source
from zephyr.inference.backends import ChatRequest, make_backend
from zephyr.inference.failures import FailureLog, check_missing
from zephyr.inference.settings import GeneratorConfig
from zephyr.inference.store import RecordStore, parse_shard, read_stores, shard_suffix

logger = logging.getLogger("zephyr.aif")


@dataclass
class Prompt:
    id: str
    text: str  # the user turn to answer
    history: list[dict[str, str]] = field(default_factory=list)  # the dialogue before it (later turns)

    def messages(self) -> list[dict[str, str]]:
        return [*self.history, {"role": "user", "content": self.text}]


@dataclass
class Summary:
    prompts: int = 0
    completions: int = 0
    completions_new: int = 0
    judged_prompts: int = 0
    judged_new: int = 0
    failures: Counter = field(default_factory=Counter)
    first_failure: str | None = None  # the first failure's full message (a server's own words)
    missing: int = 0  # completions and judgments still missing when the stage ended
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------ prompts
def prompt_text(row: dict[str, Any], column: str) -> str:
    value = row[column]
    if column == "messages":
        users = [m["content"] for m in value if m.get("role") == "user"]
        return users[0] if users else ""
    if isinstance(value, list):  # a conversational prompt: its last user turn
        users = [m["content"] for m in value if m.get("role") == "user"]
        return users[-1] if users else ""
    return value if isinstance(value, str) else ""


def dialogue_turns(messages: list[dict[str, Any]], turns: str) -> list[tuple[int, str, list[dict[str, str]]]]:
    """(user turn number from 0, its text, the dialogue before it) for the turns `turns` asks for."""
    out = []
    for i, m in enumerate(messages):
        if m.get("role") == "user":
            history = [{"role": x["role"], "content": x["content"]} for x in messages[:i]]
            out.append((len(out), m["content"] or "", history))
    if turns == "first":
        return [(n, text, []) for n, text, _ in out[:1]]  # alone, as Zephyr's prompts are
    return out[-1:] if turns == "last" else out


def row_prompts(row: dict[str, Any], column: str, turns: str) -> list[tuple[int, str, list[dict[str, str]]]]:
    if column == "messages" and isinstance(row[column], list):
        return dialogue_turns(row[column], turns)
    return [(0, prompt_text(row, column), [])]


def load_prompts(src: PromptSource) -> tuple[list[Prompt], Counter]:
    ds = load_source(DatasetSource(id=src.id, config=src.config, split=src.split))
    column = src.column or next((c for c in ("instruction", "prompt", "messages") if c in ds.column_names), None)
    if column is None or column not in ds.column_names:
        raise DataError(f"{src.id}: no prompt column (looked for {src.column or 'instruction, prompt, messages'}; "
                        f"has {ds.column_names})")
    id_column = src.id_column or ("prompt_id" if "prompt_id" in ds.column_names else None)
    prompts, seen, dropped = [], set(), Counter()
    for row in ds:
        turns = row_prompts(row, column, src.turns)
        first = prompt_text(row, column).strip()
        base = str(row[id_column]) if id_column else hashlib.sha256(first.encode()).hexdigest()[:16]
        if not turns:
            dropped["empty prompt"] += 1
        for n, text, history in turns:
            if not text.strip():
                dropped["empty prompt"] += 1
                continue
            # the first turn keeps the row's id: its stored answers serve `turns: first` and `every` alike
            pid = base if n == 0 else f"{base}#turn{n}"
            if pid in seen:
                dropped["duplicate prompt id"] += 1
                continue
            seen.add(pid)
            prompts.append(Prompt(pid, text.strip(), history))
        if src.max_prompts and len(prompts) >= src.max_prompts:
            prompts = prompts[:src.max_prompts]
            break
    for reason, n in dropped.items():
        logger.warning("%s: skipped %d prompts (%s)", src.id, n, reason)
    return prompts, dropped


# ------------------------------------------------------------------------------------------------ keys
def completion_key(prompt_id: str, gen: GeneratorConfig, sample: int) -> str:
    return keys.completion_key(prompt_id, gen.name, sample, gen.settings_hash())


def content_seed(base: int, completion_keys: list[str]) -> int:
    """A batch's sampling seed, from what it contains (not from model paths: the same recipe under another
    output root samples the same answers)."""
    ids = "\n".join(keys.sample_seed_text(k) for k in completion_keys)
    return base + int(hashlib.sha256(ids.encode()).hexdigest()[:8], 16)


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ------------------------------------------------------------------------------------------------ stages
class AIFRun:
    def __init__(self, cfg: AIFConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.shard = parse_shard(cfg.shard)
        suffix = shard_suffix(self.shard)
        self.completions = RecordStore(self.out / f"completions{suffix}.jsonl")
        self.judgments = RecordStore(self.out / f"judgments{suffix}.jsonl")
        self.failure_log = FailureLog(self.out / f"failures{suffix}.jsonl")
        self.summary = Summary(failures=self.failure_log.reasons)

    def log_failure(self, kind: str, key: str, reason: str) -> None:
        self.failure_log.add(kind, key, reason)
        self.summary.first_failure = self.failure_log.first

    def generate(self, prompts: list[Prompt]) -> None:
        for gen in self.cfg.generators:
            work = [(p, s) for p in prompts for s in range(gen.num_completions)]
            todo = [(p, s) for p, s in work if completion_key(p.id, gen, s) not in self.completions]
            if not todo:
                logger.info("generator %s: all %d completions already done", gen.name, len(work))
                continue
            logger.info("generator %s (%s, %s): %d of %d completions to do", gen.name, gen.backend, gen.model,
                        len(todo), len(work))
            backend = make_backend(gen)
            size = gen.batch_size if gen.backend != "openai" else max(gen.concurrency * 4, 1)
            # Fixed batches over the whole work list, so a batch redone after a crash is the same batch.
            batches = [b for b in chunks(work, size)
                       if any(completion_key(p.id, gen, s) not in self.completions for p, s in b)]
            for batch in tqdm(batches, desc=f"Generating with {gen.name}", unit="batch"):
                self._generate_batch(gen, backend, batch)
            del backend
            gc.collect()
            self.warn_if_not_sampled(gen, prompts)

    def warn_if_not_sampled(self, gen: GeneratorConfig, prompts: list[Prompt]) -> None:
        """Several samples at temperature > 0 that are all the same text: the server ignores the sampling
        settings (transformers serve decodes greedily unless the model's generation config samples)."""
        if gen.temperature <= 0 or gen.num_completions < 2:
            return
        answered = [[self.completions.get(completion_key(p.id, gen, s)) for s in range(gen.num_completions)]
                    for p in prompts]
        complete = [[r["response"] for r in rs] for rs in answered if all(rs)]
        same = sum(len(set(texts)) == 1 for texts in complete)
        if complete and same > len(complete) // 2:
            logger.warning("generator %s: all %d samples are identical for %d of %d prompts at temperature %s: "
                           "%s probably ignores the sampling settings (transformers serve decodes greedily unless "
                           "the model's generation_config.json has do_sample: true; pass server-specific fields "
                           "with extra_body). Identical samples make no pairs.", gen.name, gen.num_completions,
                           same, len(complete), gen.temperature, gen.base_url or gen.backend)

    def _generate_batch(self, gen: GeneratorConfig, backend, batch: list[tuple[Prompt, int]]) -> None:
        batch_keys = [completion_key(p.id, gen, s) for p, s in batch]
        requests, principles = [], []
        for (p, _), key in zip(batch, batch_keys, strict=True):
            rng = random.Random(f"{gen.seed}:{keys.sample_seed_text(key)}")
            principle = rng.choice(gen.principles) if gen.principles else None
            messages = ([{"role": "system", "content": principle}] if principle else []) + p.messages()
            requests.append(ChatRequest(messages, gen.temperature, gen.top_p, gen.max_new_tokens))
            principles.append(principle)
        seed = content_seed(gen.seed, batch_keys)
        if gen.capabilities.independent_requests:
            # Endpoint requests are independent (and cost money): ask only for the answers not stored yet, each
            # with the seed it has in the whole batch, rather than the whole batch again.
            todo = [i for i, key in enumerate(batch_keys) if key not in self.completions]
            for i in todo:
                requests[i].seed = seed + i
            results: list = [None] * len(batch_keys)
            for i, result in zip(todo, backend.complete([requests[i] for i in todo], seed=seed), strict=True):
                results[i] = result
        else:
            results = backend.complete(requests, seed=seed)
        records = []
        for (p, s), key, principle, result in zip(batch, batch_keys, principles, results, strict=True):
            if key in self.completions:
                continue
            if result.failure or result.text is None:  # an empty text from a local model is its answer
                self.log_failure("generation", key, result.failure or "no answer")
                continue
            records.append({"key": key, "prompt_id": p.id, "model": gen.name, "sample_index": s,
                            "principle": principle, "response": result.text})
        self.summary.completions_new += self.completions.append(records)

    def missing(self, prompts: list[Prompt]) -> tuple[int, int]:
        """(missing, expected): completions not stored, and prompts with two answers or more not judged."""
        expected = missing = 0
        for p in prompts:
            wanted = self.expected_keys(p)
            have = [k for k in wanted if k in self.completions]
            expected += len(wanted) + (1 if len(have) >= 2 else 0)
            missing += len(wanted) - len(have)
            if len(have) >= 2 and self.judgment_key(p, have) not in self.judgments:
                missing += 1
        return missing, expected

    def expected_keys(self, prompt: Prompt) -> list[str]:
        return [completion_key(prompt.id, g, s) for g in self.cfg.generators for s in range(g.num_completions)]

    def judgment_key(self, prompt: Prompt, completion_keys: list[str]) -> str:
        return keys.judgment_key(prompt.id, self.cfg.judge.settings_hash(), completion_keys)

    def judge(self, prompts: list[Prompt]) -> None:
        ready = []
        for p in prompts:
            have = [k for k in self.expected_keys(p) if k in self.completions]
            if len(have) >= 2 and self.judgment_key(p, have) not in self.judgments:
                ready.append((p, have))
        if not ready:
            logger.info("judge: nothing to do")
            return
        logger.info("judge (%s): %d prompts to judge", self.cfg.judge.type, len(ready))
        judge = make_judge(self.cfg.judge)
        for batch in tqdm(chunks(ready, max(self.cfg.judge.batch_size, 1)), desc="Judging", unit="batch"):
            tasks = [JudgeTask(p.id, p.text, [self.completions.get(k)["response"] for k in have], p.history)
                     for p, have in batch]
            results = judge.judge(tasks)
            records = []
            for (p, have), judgments in zip(batch, results, strict=True):
                reasons = {j["failure"] for j in judgments if "failure" in j}
                if reasons:
                    self.log_failure("judge", p.id, sorted(reasons)[0])
                    continue
                records.append({"key": self.judgment_key(p, have), "prompt_id": p.id,
                                "completions": dict(zip(have, judgments, strict=True))})
            self.summary.judged_new += self.judgments.append(records)
        del judge
        gc.collect()


# ------------------------------------------------------------------------------------------------ outputs
def collect(cfg: AIFConfig, prompts: list[Prompt], out: Path) -> list[tuple[Prompt, list[dict[str, Any]]]]:
    """Every prompt with its completions and (if judged with the current judge) their judgments, from all
    shards' stores."""
    completions = read_stores(out.glob("completions*.jsonl"))
    judgments = read_stores(out.glob("judgments*.jsonl"))
    judge_hash = cfg.judge.settings_hash()
    by_prompt: dict[str, dict[str, Any]] = {}
    for record in judgments.values():
        if keys.judge_of(record["key"]) == judge_hash:
            by_prompt.setdefault(record["prompt_id"], {}).update(record["completions"])
    collected = []
    for p in prompts:
        items = []
        for g in cfg.generators:
            for s in range(g.num_completions):
                key = completion_key(p.id, g, s)
                if key in completions:
                    items.append({**completions[key], "judgment": by_prompt.get(p.id, {}).get(key)})
        collected.append((p, items))
    return collected


def write_outputs(cfg: AIFConfig, collected, summary: Summary) -> None:
    """raw.jsonl and the binarized dataset. The dataset is written aside and then swapped in whole: a run that
    cannot make a single pair, or dies while writing, leaves the previous dataset as it was."""
    out = Path(cfg.output_dir)
    candidates = [RatedPrompt(p.text, p.id, [Candidate(i["response"], i["model"], i["judgment"]) for i in items],
                              p.history) for p, items in collected]
    rows, dropped = binarize(candidates, cfg.binarization)
    summary.pairs, summary.dropped = len(rows), dropped
    if not rows:
        return
    raw_path = out / "raw.jsonl"
    with open(raw_path.with_suffix(".jsonl.tmp"), "w") as f:
        for p, items in collected:
            context = {"history": p.history} if p.history else {}
            f.write(json.dumps({"prompt_id": p.id, "instruction": p.text, **context, "completions": [
                {k: v for k, v in item.items() if k != "key"} for item in items]}, ensure_ascii=False) + "\n")
    write_dataset(out, rows, cfg.binarization)
    raw_path.with_suffix(".jsonl.tmp").replace(raw_path)


def write_dataset(out: Path, rows: list[dict], cfg: BinarizationConfig) -> None:
    """`out/data/{train,test}_prefs-00000-of-00001.parquet`, written aside and swapped in whole."""
    test_ids = held_out(sorted(r["prompt_id"] for r in rows), cfg.test_size, cfg.seed)
    data, staging, old = out / "data", out / "data.new", out / "data.old"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for split, keep in (("train_prefs", False), ("test_prefs", True)):
        split_rows = [r for r in rows if (r["prompt_id"] in test_ids) == keep]
        if split_rows:
            datasets.Dataset.from_list(split_rows).to_parquet(str(staging / f"{split}-00000-of-00001.parquet"))
    shutil.rmtree(old, ignore_errors=True)
    if data.exists():
        data.rename(old)
    staging.rename(data)
    shutil.rmtree(old, ignore_errors=True)


def no_pairs_reason(cfg: AIFConfig, summary: Summary) -> str:
    return no_pairs_text(summary.prompts, summary.dropped, sum(g.num_completions for g in cfg.generators))


def no_pairs_text(prompts: int, dropped: Counter, per_prompt: int | None) -> str:
    """Why binarization kept nothing, in words a user can act on."""
    why = ", ".join(f"{n} {reason}" for reason, n in dropped.most_common()) or "no prompts"
    if per_prompt is not None and per_prompt < 2:
        hint = (f"each prompt gets {per_prompt} answer in all: a pair needs two (add a generator or raise "
                "num_completions)")
    elif any("tie" in reason for reason in dropped):
        hint = "the answers to each prompt were rated the same (see binarization.ties and the ratings)"
    elif dropped.get("fewer than 2 rated answers"):
        hint = "a pair needs two rated answers to a prompt (see the ratings and binarization.score)"
    else:
        hint = "see failures.jsonl and summary.json"
    return f"no preference pair could be made from {prompts} prompts ({why}): {hint}"


def held_out(ids: list[str], fraction: float, seed: int) -> set[str]:
    if fraction <= 0 or not ids:
        return set()
    rng = random.Random(seed)
    return set(rng.sample(ids, max(1, round(len(ids) * fraction))))


def run_aif(cfg: AIFConfig, rebinarize: bool = False) -> Summary:
    start = time.time()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts, _ = load_prompts(cfg.prompts)
    i, n = parse_shard(cfg.shard)
    mine = prompts[i::n]
    run = AIFRun(cfg)
    summary = run.summary
    summary.prompts = len(mine)
    if not rebinarize:
        run.generate(mine)
        run.judge(mine)
    if n > 1 and not rebinarize:
        summary.missing, expected = run.missing(mine)
        logger.info("shard %d/%d done; when every shard is done, build the dataset with --rebinarize", i, n)
    else:
        collected = collect(cfg, prompts, out)
        summary.prompts = len(prompts)
        summary.completions = sum(len(items) for _, items in collected)
        summary.judged_prompts = sum(1 for _, items in collected if items and all(x["judgment"] for x in items))
        summary.missing, expected = missing_in(cfg, collected)
        write_outputs(cfg, collected, summary)
    summary.seconds = time.time() - start
    report(summary, out)
    note = check_missing("AIF completions and judgments", summary.missing, expected, summary.failures,
                         summary.first_failure, cfg.max_failure_rate)
    if note:
        logger.warning(note)
    if not summary.pairs and not (n > 1 and not rebinarize):
        raise DataError(f"{cfg.output_dir}: {no_pairs_reason(cfg, summary)}; the previous dataset, if any, is kept")
    return summary


def missing_in(cfg: AIFConfig, collected) -> tuple[int, int]:
    """(missing, expected) over every prompt: answers not stored, and prompts with two or more answers whose
    judgment (by the current judge) is not stored."""
    per_prompt = sum(g.num_completions for g in cfg.generators)
    expected = missing = 0
    for _, items in collected:
        judged = len(items) >= 2
        expected += per_prompt + judged
        missing += per_prompt - len(items) + (judged and not all(x["judgment"] for x in items))
    return missing, expected


def report(summary: Summary, out: Path) -> None:
    data = asdict(summary)
    data["failures"], data["dropped"] = dict(summary.failures), dict(summary.dropped)
    (out / "summary.json").write_text(json.dumps(data, indent=2, sort_keys=True))
    logger.info(
        "AIF summary: %d prompts, %d completions (%d new), %d prompts judged (%d new), failures %s, "
        "%d pairs kept, dropped %s, %.1fs. Dataset: %s", summary.prompts, summary.completions,
        summary.completions_new, summary.judged_prompts, summary.judged_new, dict(summary.failures) or "none",
        summary.pairs, dict(summary.dropped) or "none", summary.seconds, out / "data")
