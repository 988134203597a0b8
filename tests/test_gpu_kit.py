"""The GPU check kit (benchmarks/gpu/) runs its code paths on CPU in the suite, so it never rots between runs on
a GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "benchmarks" / "gpu"


@pytest.mark.slow
def test_smoke_runs_every_check_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(KIT / "check.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "ZEPHYR_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status == {"env": "ok", "matmul": "ok", "packed[sdpa]": "ok", "packed[eager]": "ok", "dpo-step0": "ok",
                      "dpo-reference": "ok", "throughput": "ok", "generation": "ok", "qlora": "ok", "zero3": "ok",
                      "packed[flash_attention_2]": "skipped", "packed[flex_attention]": "skipped"}
    checks = {c["name"]: c for c in report["checks"]}
    assert abs(checks["dpo-step0"]["details"]["losses"][0] - 0.6931471805599453) < 1e-4
    assert checks["dpo-reference"]["details"]["changed_reference_tensors"] == []
    throughput = checks["throughput"]["details"]
    assert throughput["max_loss_diff"] <= 1e-4  # fp32: the same batches, the same losses
    # every TRL side but Liger's (Triton kernels: CUDA only, said so) ran, as zephyr did, on the same batches
    assert set(throughput["variants"]) == {"trl-handbook", "trl-precompute", "zephyr"}
    assert set(throughput["skipped_variants"]) == {"trl-precompute-liger"}
    assert set(throughput["loss_diffs"]) == {"trl-handbook", "trl-precompute"}
    for variant in throughput["variants"].values():
        assert variant["steps"] == 2 and variant["real_tokens"] > 0
        assert variant["pairs_per_s"] == pytest.approx(throughput["pairs"] / variant["end_to_end_seconds"])
        # the extrapolation: per-layer work times 32 layers plus the head, against this model's
        seven_b = 32 * variant["params_per_layer"] + variant["head_params"]
        assert variant["extrapolated_7b_pairs_per_s_per_gpu"] == pytest.approx(
            variant["pairs_per_s"] * variant["non_embedding_params"] / seven_b)
        assert 0 < variant["mfu"] < 1
    assert throughput["variants"]["zephyr"]["ref_batches"] == 1  # ref_token_budget: every pair in one batch
    zero3 = checks["zero3"]["details"]
    assert len(zero3["losses"]["zero3"]) == 4 and zero3["max_loss_diff"] <= 1e-4  # fp32: ZeRO-3 changes no maths
    # the table is printed last and saved
    table = (out / "gpu_check.md").read_text()
    assert proc.stdout.rstrip().endswith(table.rstrip())
    assert "| throughput | ok |" in table


def _wheel(folder: Path, dist: str, module: str) -> Path:
    path = folder / f"{dist}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        info = f"{dist}-0.1.dist-info"
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_wheel_install_adds_only_what_is_missing(tmp_path, monkeypatch):
    sys.path.insert(0, str(KIT))
    try:
        import wheels
    finally:
        sys.path.remove(str(KIT))
    source = tmp_path / "wheels"
    source.mkdir()
    _wheel(source, "zz_kit_probe", "zz_kit_probe")
    _wheel(source, "yaml_shadow", "yaml")  # a module this Python already has: must not be shadowed
    monkeypatch.setattr(wheels, "WHEELS", source)
    monkeypatch.setattr(wheels, "PACKAGES", [("yaml_shadow==0.1", "yaml", "test")])
    target = tmp_path / "target"
    assert wheels.install(target) == 0
    assert (target / "zz_kit_probe" / "__init__.py").is_file()
    assert not (target / "yaml").exists()


def test_carried_set_fits_the_limit_when_fetched():
    """Where `wheels.py fetch` has run (before a GPU run), what travels must fit one call's 64 MiB."""
    sys.path.insert(0, str(KIT))
    try:
        import wheels
    finally:
        sys.path.remove(str(KIT))
    assert wheels.LIMIT == 64 * 2**20
    assert {module for _, module, _ in wheels.PACKAGES} >= {"trl", "datasets", "bitsandbytes", "liger_kernel"}
    assert [module for _, module, _ in wheels.BUILT] == ["deepspeed"]
    if wheels.WHEELS.is_dir():
        assert wheels.folder_bytes(wheels.WHEELS) <= wheels.LIMIT
