"""Safe loading: no custom model code unless the recipe allows it, torch.load only with weights_only=True,
safetensors on save."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

from zephyr.configs import ModelArguments
from zephyr.modeling import load_model

REPO = Path(__file__).resolve().parents[1]


def test_custom_model_code_is_refused_by_default(tiny_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_dir / "model", folder)
    marker = tmp_path / "custom_code_ran"
    (folder / "modeling_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import MistralForCausalLM\nclass EvilForCausalLM(MistralForCausalLM):\n    pass\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(ModelArguments(model_name_or_path=str(folder), dtype="float32"))
    assert type(model).__name__ == "MistralForCausalLM"  # the library's own class, not the folder's
    assert not marker.exists()  # the folder's code never ran
    trusted = load_model(ModelArguments(model_name_or_path=str(folder), dtype="float32", trust_remote_code=True))
    assert type(trusted).__name__ == "EvilForCausalLM" and marker.exists()  # only when the recipe says so


def test_every_torch_load_uses_weights_only():
    calls = []
    for path in list((REPO / "zephyr").rglob("*.py")) + list((REPO / "scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" and \
                    getattr(node.func.value, "id", None) == "torch":
                calls.append((path, {k.arg: getattr(k.value, "value", None) for k in node.keywords}))
    assert all(kw.get("weights_only") is True for _, kw in calls), calls


def test_no_pickled_weights_are_written(tiny_dir):
    assert (tiny_dir / "model" / "model.safetensors").is_file()
    assert not list((tiny_dir / "model").glob("*.bin"))
