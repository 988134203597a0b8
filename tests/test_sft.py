"""dSFT end to end: training, saved files, reload + generate, resume, packing, LoRA + merge, QLoRA."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import stage_configs
from transformers import AutoModelForCausalLM, AutoTokenizer

from zephyr import cli
from zephyr.stages import sft


def sft_args(tiny, out, *extra):
    return ["--model_name_or_path", str(tiny / "model"), "--dataset_name", str(tiny / "data" / "sft"),
            "--dataset_train_split", "train_sft", "--dataset_test_split", "test_sft", "--max_eval_samples", "16",
            "--long_rows", "drop", "--dtype", "float32", "--output_dir", str(out), "--max_length", "128",
            "--per_device_train_batch_size", "16", "--learning_rate", "3e-3", "--logging_steps", "1",
            "--gradient_checkpointing", "false", "--eval_strategy", "no", "--seed", "0", *extra]


def log_losses(out):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


@pytest.mark.slow
def test_sft_end_to_end_loss_falls_files_written_model_generates(tiny_dir, tmp_path):
    out = tmp_path / "sft"
    metrics = sft.main(sft_args(tiny_dir, out, "--num_train_epochs", "2", "--save_strategy", "epoch", "--warmup_steps", "0.1",
                                "--per_device_train_batch_size", "32", "--logging_steps", "3",
                                "--max_train_samples", "2000"))
    losses = [loss for _, loss in log_losses(out)]
    assert len(losses) == 42  # 2000 rows / 32 = 63 steps an epoch, logged every 3
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5  # the loss falls
    assert metrics["eval_loss"] < losses[0]
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja", "config.json", "README.md",
                 "all_results.json", "zephyr_recipe.yaml", "data_report.json", "trainer_state.json"):
        assert (out / name).is_file(), name
    assert "eval_loss" in (out / "README.md").read_text()
    report = json.loads((out / "data_report.json").read_text())
    assert report["train_rows"] == 2000 and report["eval_rows"] == 16

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.chat_template and "{% generation %}" in tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=24, do_sample=False)[0, prompt["input_ids"].shape[1]:]
    assert generated[-1] == tok.eos_token_id  # it learned to stop (EOS was trained)
    text = tok.decode(generated, skip_special_tokens=True)
    assert re.fullmatch(r"\d+ \+ \d+ = \d+\.", text), text  # and the answer format of the task


def test_rerun_resumes_from_last_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "sft_resume"
    common = ["--max_train_samples", "256", "--save_strategy", "steps", "--save_steps", "4"]
    sft.main(sft_args(tiny_dir, out, *common, "--max_steps", "4"))
    first = log_losses(out)
    assert (out / "checkpoint-4").is_dir()
    sft.main(sft_args(tiny_dir, out, *common, "--max_steps", "8"))
    second = log_losses(out)
    assert [s for s, _ in second] == list(range(1, 9))
    assert second[:4] == first  # steps 1-4 come from the checkpoint, not retrained
    assert (out / "checkpoint-8").is_dir()


def test_packing_fills_sequences(tiny_dir, tmp_path):
    configs = stage_configs("sft", tiny_dir, tmp_path, packing=True, max_length=128, max_train_samples=64)
    trainer, _, _ = sft.build_trainer(*configs)
    lengths = [len(x["input_ids"]) for x in trainer.train_dataset]
    assert len(lengths) < 64 and max(lengths) <= 128
    assert sum(lengths) / len(lengths) > 64  # rows are packed together


def test_lora_sft_then_merge_gives_the_same_logits(tiny_dir, tmp_path):
    out, merged = tmp_path / "lora", tmp_path / "merged"
    sft.main(sft_args(tiny_dir, out, "--max_train_samples", "64", "--max_steps", "4", "--use_peft", "true",
                      "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj,v_proj",
                      "--save_strategy", "no"))
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 4
    assert (out / "adapter_model.safetensors").is_file()
    assert cli.main(["merge", str(out), str(merged)]) == 0
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()

    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_dir / "model")
    with_adapter = PeftModel.from_pretrained(base, out).eval()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = torch.tensor([[1, 5, 40, 41, 42, 2, 6]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, with_adapter(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain(ids).logits, base(ids).logits)  # the adapter changed something


def test_merge_refuses_a_folder_without_adapter(tiny_dir, tmp_path, capsys):
    assert cli.main(["merge", str(tiny_dir / "model"), str(tmp_path / "x")]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_qlora_4bit_trains_on_cpu(tiny_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    configs = stage_configs("sft", tiny_dir, tmp_path, use_peft=True, load_in_4bit=True, lora_r=4, max_steps=2,
                            max_train_samples=16, learning_rate=1e-3)
    trainer, _, _ = sft.build_trainer(*configs)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    lora = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(v, after[k]) for k, v in lora.items())


def test_fast_lm_head_gives_the_same_sft_losses_and_weights(tiny_dir, tmp_path):
    """lm_head_labels_only and cpu_log_prob_kernel (zephyr/hooks/lm_head.py) in dSFT: the same per-step losses and
    final weights as TRL's own fused head, on assistant-only labels."""
    results = {}
    for fast in (False, True):
        configs = stage_configs("sft", tiny_dir, tmp_path / str(fast), max_steps=3, max_train_samples=32,
                                learning_rate=1e-3, logging_steps=1, lm_head_labels_only=fast, cpu_log_prob_kernel=fast)
        trainer, _, _ = sft.build_trainer(*configs)
        trainer.train()
        results[fast] = ([h["loss"] for h in trainer.state.log_history if "loss" in h],
                         {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    (slow_losses, slow_weights), (fast_losses, fast_weights) = results[False], results[True]
    assert len(fast_losses) == 3 and fast_losses[0] != fast_losses[-1]
    for a, b in zip(slow_losses, fast_losses, strict=True):
        assert abs(a - b) < 1e-5
    for name, weight in fast_weights.items():
        torch.testing.assert_close(weight, slow_weights[name], atol=1e-5, rtol=1e-4, msg=name)
