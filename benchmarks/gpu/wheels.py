"""The packages an air-gapped GPU node lacks, as wheels that travel with the checkout.

    python benchmarks/gpu/wheels.py fetch             # here: download into benchmarks/gpu/wheels/ (git-ignored)
    python benchmarks/gpu/wheels.py install DIR       # there: pip install --no-index --no-deps --target DIR

The node this is written for has Python 3.12, torch with CUDA, transformers 5.17,
accelerate, peft, pyarrow, pandas, tokenizers, safetensors; nothing can be downloaded there and at most 64 MiB
travel per call. So: wheels for Python 3.12 / manylinux x86_64, chosen to fit what is installed there:
- datasets 4.8 rather than our 5.2: transformers 5.17 wants huggingface-hub < 2, which datasets 4.8 accepts
  whatever 1.x is there (5.2 needs >= 1.31);
- a wheel is installed there only when its module is missing, so nothing the image ships is shadowed;
- deepspeed has no wheel on PyPI, but its source builds a pure-Python wheel with every op left to compile just
  in time (DS_BUILD_OPS=0): `fetch` builds it here, and it travels with its small dependencies;
- liger-kernel is a pure-Python wheel (Triton kernels): the kit's TRL-with-Liger side;
- flash-attn has no wheel on PyPI (source only, compiled against a CUDA toolkit) and vLLM's is ~336 MB: they
  cannot travel, and the check kit says so in its table.
The Mistral-7B tokenizer (3.5 MB, from the mistral-common package) travels in the same folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEELS = HERE / "wheels"
LIMIT = 64 * 2**20  # bytes that may travel with one call
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "any")

# (requirement, module it provides, why)
PACKAGES = [
    ("trl==1.16.0", "trl", "DPOTrainer: zephyr's dDPO and the handbook baseline"),
    ("datasets==4.8.4", "datasets", "TRL and zephyr's data preparation"),
    ("dill==0.4.1", "dill", "datasets"),
    ("multiprocess==0.70.19", "multiprocess", "datasets"),
    ("fsspec==2026.2.0", "fsspec", "datasets (<= 2026.2.0)"),
    ("requests==2.34.2", "requests", "datasets 4.8"),
    ("urllib3==2.8.0", "urllib3", "requests"),
    ("idna==3.20", "idna", "requests"),
    ("charset-normalizer==3.5.3", "charset_normalizer", "requests"),
    ("certifi==2026.10.19.post1", "certifi", "requests"),
    ("peft==0.21.2", "peft", "LoRA (only if the image lacks it)"),
    ("liger-kernel==0.8.5", "liger_kernel", "the throughput check's TRL side with Liger's kernels"),
    ("hjson==3.1.0", "hjson", "deepspeed"),
    ("ninja==1.13.2", "ninja", "deepspeed (its just-in-time ops)"),
    ("py-cpuinfo==9.0.0", "cpuinfo", "deepspeed"),
    ("msgpack==1.2.4", "msgpack", "deepspeed"),
    ("einops==0.8.2", "einops", "deepspeed"),
    ("pydantic==2.14.4", "pydantic", "deepspeed's config"),
    ("pydantic-core==2.50.5", "pydantic_core", "pydantic"),
    ("annotated-types==0.8.0", "annotated_types", "pydantic"),
    ("typing-inspection==0.4.5", "typing_inspection", "pydantic"),
    ("bitsandbytes==0.50.2", "bitsandbytes", "the QLoRA check (4-bit NF4); the largest wheel, dropped first"),
]
# built here from its source distribution, pure Python (requirement, module, why)
BUILT = [("deepspeed==0.19.8", "deepspeed", "the zero3 check: ZeRO-3 dDPO on one GPU")]
CANNOT_TRAVEL = {
    "flash-attn": "no wheel on PyPI (source only, compiled against the local CUDA toolkit)",
    "vllm": "its wheel is ~336 MB, over the 64 MiB a call may carry; it also pins its own torch",
}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def fetch(python: str) -> int:
    WHEELS.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for requirement, _, _ in PACKAGES:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", python, "--implementation", "cp", *platforms, "--dest", str(WHEELS), requirement]
        if subprocess.run(cmd).returncode != 0:
            print(f"cannot download {requirement}", file=sys.stderr)
            return 1
    for requirement, _, _ in BUILT:  # its ops compile just in time on the node: the wheel is pure Python
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
               "--no-binary", requirement.split("==")[0], "--wheel-dir", str(WHEELS), requirement]
        if subprocess.run(cmd, env={**os.environ, "DS_BUILD_OPS": "0"}).returncode != 0:
            print(f"cannot build {requirement}", file=sys.stderr)
            return 1
    sys.path.insert(0, str(HERE.parent))
    import synthetic

    tokenizer = synthetic.save_mistral_tokenizer(WHEELS / "mistral-tokenizer")
    total = folder_bytes(WHEELS)
    for path in sorted(WHEELS.glob("*.whl")):
        print(f"{path.stat().st_size / 2**20:8.2f} MiB  {path.name}")
    print(f"{folder_bytes(tokenizer) / 2**20:8.2f} MiB  {tokenizer.name}/")
    print(f"{total / 2**20:8.2f} MiB  in all (limit {LIMIT / 2**20:.0f} MiB per call)")
    for name, why in CANNOT_TRAVEL.items():
        print(f"cannot travel: {name}: {why}")
    if total > LIMIT:
        print(f"over the limit by {(total - LIMIT) / 2**20:.1f} MiB: remove the bitsandbytes wheel (the qlora "
              "check is then skipped)", file=sys.stderr)
        return 1
    return 0


def install(target: Path) -> int:
    """Install each carried wheel whose module this Python cannot import; report what was done."""
    modules = {requirement.split("==")[0].replace("-", "_").lower(): module
               for requirement, module, _ in PACKAGES + BUILT}
    wanted = []
    for wheel in sorted(WHEELS.glob("*.whl")):
        dist = wheel.name.split("-")[0].lower()
        module = modules.get(dist, dist)
        if importlib.util.find_spec(module) is None:
            wanted.append(wheel)
        else:
            print(f"present here, not installed: {module}")
    if wanted:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
               str(target), *map(str, wanted)]
        if subprocess.run(cmd).returncode != 0:
            return 1
        print("installed: " + ", ".join(w.name for w in wanted))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_parser = sub.add_parser("fetch", help="download the wheels and the tokenizer into benchmarks/gpu/wheels/")
    fetch_parser.add_argument("--python-version", default="3.12", help="the GPU node's Python (default 3.12)")
    install_parser = sub.add_parser("install", help="install the carried wheels this machine lacks into DIR")
    install_parser.add_argument("target", type=Path)
    args = parser.parse_args()
    return fetch(args.python_version) if args.command == "fetch" else install(args.target)


if __name__ == "__main__":
    sys.exit(main())
