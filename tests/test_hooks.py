"""Contract tests for zephyr/hooks/: every private name of transformers and TRL zephyr relies on, checked
against the installed libraries. An upgrade that renames a hook, changes its parameters or stops calling it fails
here, and the test id names the hook (`test_hook_exists[transformers.Trainer._get_grad_norm]`).

One short dSFT, dDPO and KTO run each (2 steps, a checkpoint each step, pushed to a stand-in Hub), and a short
ORPO run, are shared by every "is it still reached" check; tests/test_pref_stages.py checks the checkpoint hooks inside the ORPO, CPO, KTO
and reward trainers."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import re
import shutil
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import stage_configs
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

from zephyr import checkpointing
from zephyr.configs import ZephyrDPOConfig
from zephyr.hooks import (
    HOOKS,
    REFERENCE_NEUTRAL_FIELDS,
    fast_module_hash,
    model_identity,
    recording,
    reference_pass_settings,
    trl_reference_hash,
)
from zephyr.stages import dpo, kto, orpo, rm, sft, simpo

REPO = Path(__file__).resolve().parents[1]
HOOK_KEYS = sorted(HOOKS)


def explain(hook) -> str:
    return f"{hook.key} ({hook.library}, {hook.kind}); zephyr needs it because: {hook.why}"


# ------------------------------------------------------------------------------------------ the shared short runs
class StandInHub:
    """Records what the Trainer uploads instead of sending it: the folder, where it goes in the repo, and the
    files an upload would read (listed at the call, with the ignore patterns the Trainer passes)."""

    def __init__(self) -> None:
        self.uploads: list[dict] = []

    def create_repo(self, api, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, api, *, folder_path, path_in_repo=None, ignore_patterns=None, run_as_future=False,
                      **kwargs):
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self.uploads.append({"folder": folder, "path_in_repo": path_in_repo, "ignore_patterns": ignore_patterns,
                             "files": list(filter_repo_objects(files, ignore_patterns=ignore_patterns))})
        done: Future = Future()
        done.set_result(None)
        return done if run_as_future else None


@pytest.fixture(scope="module")
def short_runs(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hooks")
    hub = StandInHub()
    trainers = {}
    with pytest.MonkeyPatch.context() as patch, recording() as calls:
        patch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw))
        patch.setattr(HfApi, "upload_folder", lambda api, **kw: hub.upload_folder(api, **kw))
        patch.setenv("ZEPHYR_CACHE", str(tmp / "cache"))
        runs = (("sft", sft, "checkpoint", {}),
                ("dpo", dpo, "all_checkpoints", {"precompute_ref_log_probs": True, "dataset_test_split": None}),
                # KTO's reference cache is keyed with zephyr's hash too; its KL estimate needs rows in a fixed order
                ("kto", kto, "checkpoint", {"dataset_test_split": None, "train_sampling_strategy": "sequential"}))
        for stage, module, strategy, extra in runs:
            settings = {"train_sampling_strategy": "group_by_length", **extra}
            configs = stage_configs(stage, tiny_dir, tmp / stage, max_steps=2, max_train_samples=16,
                                    save_strategy="steps", save_steps=1, push_to_hub=True,
                                    hub_model_id=f"someone/{stage}", hub_strategy=strategy, **settings)
            trainer, _, _ = module.build_trainer(*configs)
            trainer.train()
            trainers[stage] = trainer
        # TRL's experimental ORPO (and CPO) trainers keep their metrics apart (`_stored_metrics`): one short run
        orpo_trainer, _, _ = orpo.build_trainer(*stage_configs("orpo", tiny_dir, tmp / "orpo", max_steps=2,
                                                               max_train_samples=16))
        orpo_trainer.train()
    return SimpleNamespace(calls=calls, uploads=hub.uploads, trainers=trainers)


# ------------------------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("key", HOOK_KEYS)
def test_hook_exists_with_the_parameters_zephyr_relies_on(key):
    hook = HOOKS[key]
    owner = hook.resolve_owner()
    if hook.kind == "attribute" and not hasattr(owner, hook.name):
        return  # an instance attribute: checked on the trainers of the short runs
    assert hasattr(owner, hook.name), f"{hook.owner} has no {hook.name} any more. {explain(hook)}"
    if hook.params is not None:
        params = tuple(inspect.signature(getattr(owner, hook.name)).parameters)
        assert params == hook.params, f"{hook.key} now takes {params}, zephyr passes {hook.params}. {explain(hook)}"


@pytest.mark.parametrize("key", HOOK_KEYS)
def test_hook_is_reached_in_a_short_run(key, short_runs):
    hook = HOOKS[key]
    if hook.key.endswith("._total_train_tokens"):  # read back only on resume: check TRL still counts into it
        for stage, trainer in short_runs.trainers.items():
            logged = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
            assert logged and getattr(trainer, hook.name, None) == logged[-1], (
                f"{stage}: TRL no longer logs num_tokens from {hook.name}. {explain(hook)}")
        return
    if hook.key == "transformers.models.mixtral.modeling_mixtral.load_balancing_loss_func":
        assert moe_packed_forward_calls()[key] > 0, f"{hook.key} not reached by a packed MoE forward. {explain(hook)}"
        return
    assert short_runs.calls[key] > 0, f"{hook.key} was never reached in a short training run. {explain(hook)}"


def moe_packed_forward_calls():
    """The hooks a packed forward of a tiny Mixtral with router logits reaches (the tiny model has no experts)."""
    import transformers
    from trl.trainer.utils import add_fused_lm_head

    from zephyr.packing import PackedForward

    config = transformers.AutoConfig.for_model("mixtral", num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                               num_attention_heads=2, num_key_value_heads=1, vocab_size=32,
                                               num_local_experts=2, num_experts_per_tok=1)
    model = transformers.AutoModelForCausalLM.from_config(config)
    add_fused_lm_head(model)
    ids = torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]])
    with recording() as calls:
        out = PackedForward(model, 0)(ids, (ids > 0).long(), ids.masked_fill(ids == 0, -100), fused_lm_head=True,
                                      output_router_logits=True)
    assert out.aux_loss is not None
    return calls


def test_the_library_still_calls_the_zephyr_side_of_every_hook(short_runs):
    """The zephyr methods the hooks hand over to, and TRL's attention-kernel attribute, seen in the runs."""
    dpo_trainer = short_runs.trainers["dpo"]
    assert dpo_trainer._precompute_model_hash == dpo_trainer.reference_weights_hash  # TRL keys with our hash
    assert isinstance(dpo_trainer.model.config._attn_implementation, str)
    stats = json.loads((Path(dpo_trainer.args.output_dir) / dpo.ZephyrDPOTrainer.REFERENCE_STATS).read_text())
    assert stats["train"]["rows"] == len(dpo_trainer.train_dataset) > 0


PUBLIC_OVERRIDES = {"__init__", "train", "training_step", "get_train_dataloader", "compute_loss",
                    "compute_ref_log_probs", "log", "get_batch_loss_metrics", "store_metrics"}


@pytest.mark.parametrize("trainer_class", [sft.ZephyrSFTTrainer, dpo.ZephyrDPOTrainer, orpo.ZephyrORPOTrainer,
                                           simpo.ZephyrCPOTrainer, kto.ZephyrKTOTrainer, rm.ZephyrRewardTrainer])
def test_zephyr_trainers_override_only_declared_hooks_and_chosen_public_methods(trainer_class):
    """A method zephyr adds must not shadow a library name by accident, and a private override must be declared
    in zephyr/hooks/ (or it goes unchecked when the library changes)."""
    library = next(c for c in trainer_class.__mro__ if c.__module__.startswith("trl."))
    declared = {(h.name) for h in HOOKS.values() if h.kind == "override"}
    for klass in trainer_class.__mro__:
        if not klass.__module__.startswith("zephyr."):
            continue
        for name in vars(klass):
            if (name.startswith("__") and name != "__init__") or not hasattr(library, name):
                continue
            where = f"{klass.__module__}.{klass.__name__}.{name} shadows {library.__name__}.{name}"
            if name.startswith("_") and name != "__init__":
                assert name in declared and klass.__module__.startswith("zephyr.hooks."), (
                    f"{where}: declare it with @private_override in zephyr/hooks/")
            else:
                assert name in PUBLIC_OVERRIDES, f"{where}: rename it, or add it to PUBLIC_OVERRIDES if meant"


def test_public_methods_zephyr_overrides_keep_their_parameters():
    from trl import DPOTrainer

    assert list(inspect.signature(DPOTrainer.compute_ref_log_probs).parameters) == ["self", "model", "inputs"]
    assert list(inspect.signature(DPOTrainer.compute_loss).parameters) == [
        "self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert list(inspect.signature(DPOTrainer.log).parameters) == ["self", "logs", "start_time"]
    for trainer in (orpo.ORPOTrainer, simpo.CPOTrainer):  # zephyr/hooks/metrics.py WeightedOddsMetrics
        assert list(inspect.signature(trainer.get_batch_loss_metrics).parameters) == [
            "self", "model", "batch", "train_eval"]
        assert list(inspect.signature(trainer.store_metrics).parameters) == ["self", "metrics", "train_eval"]


# Private names zephyr used to reach for and now does through public APIs: they must not come back.
RETIRED = ["_tokenizer", "_precompute_model_hash", "_fingerprint", "_get_cache_file_path", "_finalize_training",
           "_compute_loss", "_storage", "_trial_id"]


def test_private_library_names_appear_only_in_zephyr_hooks():
    names = sorted({h.name for h in HOOKS.values()} | set(RETIRED))
    for path in sorted((REPO / "zephyr").rglob("*.py")):
        if path.parent.name == "hooks":
            continue
        text = path.read_text()
        found = [n for n in names if re.search(rf"(?<![\w]){re.escape(n)}\b", text)]
        assert not found, f"{path.relative_to(REPO)} uses {found}: go through zephyr/hooks/ (declared and tested)"


# --------------------------------------------------------------------------------------------- checkpoints + Hub
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_checkpoints_reach_the_hub_only_from_their_published_folder(stage, short_runs):
    trainer = short_runs.trainers[stage]
    out = Path(trainer.args.output_dir)
    uploads = [u for u in short_runs.uploads if out in (u["folder"], *u["folder"].parents)]
    read = [str(u["folder"]) for u in uploads] + [f for u in uploads for f in u["files"]]
    assert not [p for p in read if "tmp-checkpoint" in p]  # the staging folder is never read by an upload
    checkpoint_uploads = [u for u in uploads if u["path_in_repo"] is not None]
    assert [u["folder"] for u in checkpoint_uploads] == [out / "checkpoint-1", out / "checkpoint-2"]
    repo_names = ["last-checkpoint"] * 2 if stage == "sft" else ["checkpoint-1", "checkpoint-2"]
    assert [u["path_in_repo"] for u in checkpoint_uploads] == repo_names
    for u in checkpoint_uploads:  # every file of the published checkpoint, as its manifest lists them
        manifest = json.loads((u["folder"] / checkpointing.MANIFEST).read_text())["files"]
        assert set(u["files"]) == {*manifest, checkpointing.MANIFEST}
        assert "optimizer.pt" in u["files"]
    model_uploads = [u for u in uploads if u["path_in_repo"] is None]
    assert [u["folder"] for u in model_uploads] == [out, out]
    for u in model_uploads:
        assert "model.safetensors" in u["files"] and not any(f.startswith("checkpoint-") for f in u["files"])
    # An upload queued in the background may only start reading output_dir while the next checkpoint is staged:
    # its ignore patterns must still leave the staging folder out.
    staged = checkpointing.staging_dir(out, 3) / "checkpoint-3"
    staged.mkdir(parents=True)
    (staged / "optimizer.pt").write_bytes(b"state")
    files = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    late = list(filter_repo_objects(files, ignore_patterns=model_uploads[-1]["ignore_patterns"]))
    assert late and not [f for f in late if "tmp-checkpoint" in f]


# ------------------------------------------------------------------------------------------------ reference cache
def test_fast_module_hash_tells_weights_apart():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    same = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    same.load_state_dict(model.state_dict())
    key = fast_module_hash(model)
    assert len(key) == 32 and key == fast_module_hash(same)
    with torch.no_grad():
        same[1].weight[0, 0] = torch.nextafter(same[1].weight[0, 0], torch.tensor(1.0))  # one ulp in one weight
    assert fast_module_hash(same) != key
    assert fast_module_hash(model.to(torch.bfloat16)) != key  # the dtype is part of the identity


def test_trl_reference_hash_is_swapped_only_while_building():
    from trl.trainer import dpo_trainer

    original = dpo_trainer.hash_module
    with trl_reference_hash(lambda module: "x"):
        assert dpo_trainer.hash_module(None) == "x"
    assert dpo_trainer.hash_module is original


def changed(args, **values):
    """A copy of a training config with fields changed (without __post_init__'s hardware checks)."""
    new = copy.copy(args)
    for name, value in values.items():
        assert hasattr(new, name), name
        setattr(new, name, value)
    return new


SHAPING = {"ld_alpha": 0.5, "bf16": True, "fp16": True, "tf32": True, "max_length": 64,
           "truncation_mode": "keep_end", "pad_to_multiple_of": 8, "padding_free": True, "packed_forward": False,
           "loss_type": ["sigmoid", "sft"], "disable_dropout": False, "use_liger_kernel": True,
           "model_init_kwargs": {"dtype": "bfloat16"}, "full_determinism": True, "torch_compile": True}
NEUTRAL = {"learning_rate": 1e-3, "beta": 0.5, "output_dir": "elsewhere", "logging_steps": 7, "run_name": "other",
           "seed": 5, "report_to": ["wandb"], "save_steps": 3, "num_train_epochs": 9.0, "warmup_steps": 0.2,
           "per_device_train_batch_size": 64, "gradient_accumulation_steps": 4}


@pytest.fixture(scope="module")
def dpo_args(tmp_path_factory):
    return ZephyrDPOConfig(output_dir=str(tmp_path_factory.mktemp("args")), report_to="none")


@pytest.mark.parametrize(("field", "value"), SHAPING.items(), ids=list(SHAPING))
def test_every_setting_that_shapes_the_reference_pass_is_in_its_key(dpo_args, field, value):
    assert reference_pass_settings(changed(dpo_args, **{field: value})) != reference_pass_settings(dpo_args)


def test_settings_that_do_not_shape_the_reference_pass_leave_its_key(dpo_args):
    for field, value in NEUTRAL.items():
        assert reference_pass_settings(changed(dpo_args, **{field: value})) == reference_pass_settings(dpo_args), field


def test_a_field_a_new_library_version_adds_is_in_the_key_by_default(tmp_path):
    @dataclasses.dataclass
    class NewerConfig(ZephyrDPOConfig):
        some_new_knob: float = 0.0

    args = NewerConfig(output_dir=str(tmp_path), report_to="none")
    assert reference_pass_settings(changed(args, some_new_knob=1.0)) != reference_pass_settings(args)


def test_the_neutral_list_names_only_real_fields():
    """A renamed field would leave a stale entry here (and its new name keyed: safe, but the list rots)."""
    fields = {f.name for f in dataclasses.fields(ZephyrDPOConfig)}
    assert sorted(REFERENCE_NEUTRAL_FIELDS - fields) == []


def test_model_identity_has_the_dtype_and_attention_kernel_but_not_the_path():
    from transformers import MistralConfig

    config = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           num_key_value_heads=1, vocab_size=64)
    config._attn_implementation = "eager"
    base = model_identity(config)
    assert base["attn_implementation"] == "eager"
    moved = copy.deepcopy(config)
    moved._name_or_path = "/somewhere/else"
    assert model_identity(moved) == base
    for change in ({"_attn_implementation": "sdpa"}, {"dtype": torch.bfloat16}, {"rms_norm_eps": 1e-5}):
        other = copy.deepcopy(config)
        for name, value in change.items():
            setattr(other, name, value)
        assert model_identity(other) != base, change


def test_reference_cache_misses_on_what_shapes_the_pass_and_hits_on_the_rest(tiny_dir, tmp_path, monkeypatch):
    """Real trainers sharing one cache: ld_alpha, the model's dtype or the launcher's precision recompute (and
    give other log-probs); learning rate, beta, output_dir, logging and the model's path read the first run's
    pass (the rows are keyed by their content, not by the dataset's fingerprint or metadata)."""
    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "cache"))
    moved = tmp_path / "moved"
    shutil.copytree(tiny_dir / "model", moved / "model")
    base = {"precompute_ref_log_probs": True, "max_train_samples": 8, "dataset_test_split": None}
    runs = {"first": {}, "hit": {"learning_rate": 1e-2, "beta": 0.3, "logging_steps": 5},
            "moved": {"model_name_or_path": str(moved / "model")},
            "ld_alpha": {"ld_alpha": 0.5}, "bfloat16": {"dtype": "bfloat16"}, "launcher_bf16": {}}
    computed, logps = {}, {}
    for name, extra in runs.items():
        if name == "launcher_bf16":  # `accelerate launch --mixed_precision bf16` with a recipe saying bf16: false
            monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
        trainer, _, _ = dpo.build_trainer(*stage_configs("dpo", tiny_dir, tmp_path / name, **base, **extra))
        stats = json.loads((tmp_path / name / "dpo_out" / dpo.ZephyrDPOTrainer.REFERENCE_STATS).read_text())
        computed[name] = stats["train"]["computed"]
        ds = trainer.train_dataset
        logps[name] = torch.tensor([ds["ref_chosen_logps"], ds["ref_rejected_logps"]])
    assert computed == {"first": True, "hit": False, "moved": False, "ld_alpha": True, "bfloat16": True,
                        "launcher_bf16": True}
    assert trainer.accelerator.mixed_precision == "bf16" and not trainer.args.bf16
    assert torch.equal(logps["hit"], logps["first"]) and torch.equal(logps["moved"], logps["first"])
    assert not torch.allclose(logps["launcher_bf16"], logps["first"], atol=1e-6, rtol=0)
    assert not torch.allclose(logps["ld_alpha"], logps["first"])  # reusing them would have been wrong


def test_packed_reference_pass_equals_the_padded_one(tiny_dir, tmp_path, monkeypatch):
    """The reference pass runs packed (zephyr/packing.py); its cached log-probs equal TRL's padded pass (fp32)."""
    logps = {}
    for packed in (True, False):
        monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / f"cache-{packed}"))  # both passes computed, not read
        trainer, _, _ = dpo.build_trainer(*stage_configs(
            "dpo", tiny_dir, tmp_path / str(packed), precompute_ref_log_probs=True, packed_forward=packed,
            max_train_samples=12, dataset_test_split=None))
        ds = trainer.train_dataset
        assert json.loads((tmp_path / str(packed) / "dpo_out" / "reference_logps.json").read_text())["train"]["computed"]
        logps[packed] = torch.tensor([ds["ref_chosen_logps"], ds["ref_rejected_logps"]])
    assert logps[True].shape == (2, 12)
    torch.testing.assert_close(logps[True], logps[False], atol=1e-4, rtol=1e-6)


def test_reference_pass_sized_by_a_token_budget_gives_the_same_log_probs_in_fewer_batches(tiny_dir, tmp_path,
                                                                                          monkeypatch):
    """ref_token_budget sizes the reference pass's batches by tokens: 24 pairs in 1 batch instead of 6 of 4, the
    same log-probs (fp32, packed either way), and a batch size of its own in the cache key. A user's
    precompute_ref_batch_size wins over the budget."""
    runs = {}
    for name, settings in (("rows", {}), ("budget", {"ref_token_budget": 10**6}),
                           ("explicit", {"ref_token_budget": 10**6, "precompute_ref_batch_size": 8})):
        monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / f"cache-{name}"))
        trainer, _, _ = dpo.build_trainer(*stage_configs(
            "dpo", tiny_dir, tmp_path / name, precompute_ref_log_probs=True, max_train_samples=24,
            dataset_test_split=None, **settings))
        ds = trainer.train_dataset
        runs[name] = (trainer.reference_batches_computed, torch.tensor([ds["ref_chosen_logps"],
                                                                        ds["ref_rejected_logps"]]))
    assert [runs[n][0] for n in ("rows", "budget", "explicit")] == [6, 1, 3]
    assert runs["rows"][1].shape == (2, 24)
    torch.testing.assert_close(runs["budget"][1], runs["rows"][1], atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(runs["explicit"][1], runs["rows"][1], atol=1e-4, rtol=1e-6)
