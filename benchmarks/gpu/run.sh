#!/usr/bin/env bash
# On the air-gapped GPU node, from the repository root: install the carried wheels it lacks, then run the kit.
# Prepared on a connected machine with `python benchmarks/gpu/wheels.py fetch`; copy benchmarks/gpu/wheels along.
# Extra arguments go to check.py (e.g. --only env matmul).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
TARGET=${TMPDIR:-/tmp}/zephyr-gpu-pkgs
OUT=${OUT:-benchmarks/gpu/out}
mkdir -p "$OUT"
"$PY" benchmarks/gpu/wheels.py install "$TARGET" 2>&1 | tee "$OUT/install.log"
export PYTHONPATH="$TARGET:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/nvidia-smi.txt"
"$PY" benchmarks/gpu/check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/check.log"
exit "${PIPESTATUS[0]}"
