"""dSFT throughput with packing off and on, on the embedded data (same model, same steps).

    python benchmarks/sft_throughput.py [--steps 30] [--hidden 256] [--layers 4]

Real tokens/s counts non-padding tokens. Packing changes what a step contains (several rows per sequence), so
the two lines differ in loss by design; compare throughput, not losses.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def run(tiny: Path, out: Path, packing: bool, steps: int) -> tuple[float, int]:
    from zephyr.configs import DataArguments, ModelArguments, ZephyrSFTConfig
    from zephyr.stages import sft

    args = ZephyrSFTConfig(output_dir=str(out), per_device_train_batch_size=16, max_steps=steps, max_length=512,
                           packing=packing, logging_steps=1, save_strategy="no", eval_strategy="no",
                           report_to="none", gradient_checkpointing=False, seed=0)
    data = DataArguments(dataset_name=str(tiny / "data" / "sft"), dataset_train_split="train_sft",
                         dataset_test_split=None, long_rows="truncate")
    trainer, _, _ = sft.build_trainer(ModelArguments(model_name_or_path=str(tiny / "model"), dtype="float32"),
                                      data, args)
    tokens = []
    collate = trainer.data_collator

    def counting_collate(rows):
        batch = collate(rows)
        # padded batches carry an attention mask; packed (padding-free) ones are all real tokens
        tokens.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting_collate
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0, sum(tokens[:steps])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zephyr-sft-bench-"))
    os.environ.setdefault("ZEPHYR_CACHE", str(work / "cache"))
    from zephyr.embedded.build import build_tiny_model

    build_tiny_model(work / "tiny", hidden_size=args.hidden, num_layers=args.layers)
    rows = {}
    for packing in (False, True):
        seconds, tokens = run(work / "tiny", work / f"packing-{packing}", packing, args.steps)
        rows[packing] = (tokens / seconds, tokens, seconds)
    print(f"\ndSFT throughput: {args.steps} steps x 16 rows, Mistral {args.hidden}x{args.layers}, fp32, CPU")
    print(f"{'packing':<10}{'real tokens':>12}{'seconds':>9}{'tokens/s':>10}{'ratio':>8}")
    for packing, (tps, tokens, seconds) in rows.items():
        print(f"{str(packing):<10}{tokens:>12}{seconds:>9.1f}{tps:>10.0f}{tps / rows[False][0]:>7.2f}x")


if __name__ == "__main__":
    main()
