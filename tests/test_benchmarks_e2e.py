"""benchmarks/dpo_e2e.py at a tiny size: both sides run as whole processes, see the same batches (equal losses in
fp32) and the report ends with the headline, so the benchmark never rots between full runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dpo_e2e_smoke_prints_the_table_and_the_headline(tmp_path):
    results = tmp_path / "results.json"
    # 4 steps of 2 pairs: the loss leaves ln 2 from step 3 on, so batches in another order would differ by ~1e-3
    cmd = [sys.executable, str(ROOT / "benchmarks" / "dpo_e2e.py"), "--pairs", "8", "--batch", "2", "--hidden", "32",
           "--layers", "1", "--tokenizer", "bpe", "--out", str(tmp_path / "work"), "--json", str(results)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "ZEPHYR_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.rstrip().splitlines()
    assert re.fullmatch(r"headline: \d+\.\d\dx end-to-end vs TRL \(handbook way\)", lines[-1])
    header = next(i for i, line in enumerate(lines) if line.startswith("side ") and "max|dloss|" in line)
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["baseline", "zephyr"]
    assert "losses: every side within 0.0001 of the baseline at every step" in lines
    report = json.loads(results.read_text())
    sides = {s["side"]: s for s in report["sides"]}
    assert report["losses_match"]
    for side in sides.values():
        assert len(side["losses"]) == 4 and side["max_loss_diff"] < 1e-4
        assert side["seconds"] > 0 and side["peak_rss_gb"] > 0 and side["flops"] > 0
    assert sides["zephyr"]["real_tokens"] == sides["baseline"]["real_tokens"] > 0
    assert abs(sides["baseline"]["losses"][0] - 0.6931471805599453) < 1e-4  # step 0: policy == reference
    assert (tmp_path / "work" / "zephyr" / "model.safetensors").is_file()  # both ran to a saved model
    assert (tmp_path / "work" / "baseline" / "model.safetensors").is_file()
