"""Build the embedded default: datasets in hub layout, a BPE tokenizer trained on them, a tiny Mistral model.

Why a trained BPE tokenizer rather than Mistral-7B's real one by default: on 2 CPU cores the LM head dominates a
tiny model's cost, and a 1k vocabulary runs ~15x faster than 32k. `--tokenizer mistral` uses the real one.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import datasets
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from zephyr.chat_template import ZEPHYR_CHAT_TEMPLATE
from zephyr.embedded.tasks import make_rows, split_tasks

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

SPLITS = {  # dataset -> split -> (rows, seed)
    "sft": {"train_sft": (3000, 1), "test_sft": (100, 2)},
    "prefs": {"train_prefs": (1000, 3), "test_prefs": (100, 4)},
}


def write_datasets(out: Path, eval_fraction: float = 0.25, split_seed: int = 0) -> dict[str, Path]:
    """Write, as hub-layout folders (`data/<split>-00000-of-00001.parquet`, loadable with
    `datasets.load_dataset(folder, split=...)`):
    - `sft/`: dSFT dialogues from the imperfect teacher (UltraChat schema), over every task;
    - `prefs/`: offline preference pairs, right vs wrong answer (ultrafeedback_binarized schema);
      train_prefs from the AIF prompts, test_prefs from the held-out ones;
    - `prompts/`: the AIF prompts (`prompt`, `prompt_id`, `category`), disjoint from the eval questions;
    and `eval/questions.jsonl`: the held-out questions in MT-Bench's layout, with reference answers.
    `eval_fraction` of each task kind is held out, drawn with `split_seed`."""
    train_tasks, held_out = split_tasks(eval_fraction, split_seed)
    folders = {}
    for name, splits in SPLITS.items():
        folder = out / name
        (folder / "data").mkdir(parents=True, exist_ok=True)
        for split, (n, seed) in splits.items():
            if name == "sft":
                rows = make_rows(n, seed, "sft")
            else:
                rows = make_rows(n, seed, "prefs", train_tasks if split.startswith("train") else held_out)
            datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        folders[name] = folder
    prompts = [{"prompt": t.prompt, "prompt_id": t.prompt_id, "category": t.kind} for t in train_tasks]
    (out / "prompts" / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(prompts).to_parquet(str(out / "prompts" / "data" / "train-00000-of-00001.parquet"))
    folders["prompts"] = out / "prompts"
    (out / "eval").mkdir(parents=True, exist_ok=True)
    with open(out / "eval" / "questions.jsonl", "w") as f:
        for t in held_out:
            f.write(json.dumps({"question_id": t.prompt_id, "category": t.kind, "turns": [t.prompt],
                                "reference": [t.answer]}) + "\n")
    folders["eval"] = out / "eval"
    return folders


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    # Like Mistral's tokenizer: plain `tokenizer(text)` adds BOS; chat templates add it themselves.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
        chat_template=ZEPHYR_CHAT_TEMPLATE,
        model_max_length=2048,
    )


def mistral_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Mistral-7B v0.1's own SentencePiece tokenizer, shipped inside the mistral-common package."""
    import mistral_common
    from transformers import LlamaTokenizer

    source = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, folder / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(str(folder), add_bos_token=True)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.chat_template = ZEPHYR_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    out: str | Path,
    tokenizer: str = "bpe",
    hidden_size: int = 128,
    num_layers: int = 2,
    seed: int = 0,
    eval_fraction: float = 0.25,
    split_seed: int = 0,
) -> Path:
    """Write `<out>/model` (random-init Mistral + tokenizer, safetensors) and `<out>/data/{sft,prefs}`."""
    out = Path(out)
    data_dir = out / "data"
    folders = write_datasets(data_dir, eval_fraction, split_seed)
    model_dir = out / "model"
    if tokenizer == "bpe":
        rows = datasets.load_dataset(str(folders["sft"]), split="train_sft")
        texts = [m["content"] for row in rows for m in row["messages"]]
        tok = train_bpe_tokenizer(texts)
    elif tokenizer == "mistral":
        tok = mistral_tokenizer(model_dir)
    else:
        raise ValueError(f"tokenizer: expected 'bpe' or 'mistral', got {tokenizer!r}")
    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = MistralForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    (out / "README.md").write_text(
        "Embedded default built by `zephyr tiny-model`: random-init Mistral "
        f"({sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tok)}), datasets in data/ "
        "(sft, prefs, prompts, eval/questions.jsonl; see zephyr/embedded/tasks.py).\n"
    )
    logger.info("tiny model written to %s, datasets to %s", model_dir, data_dir)
    return out
