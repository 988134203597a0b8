"""Shared fixtures: the embedded tiny model (both tokenizers), built once per test run."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One torch thread per process: `make test` runs a pytest worker per core, and each starts whole training
# processes; a tiny model gains nothing from intra-op threads, and threads beyond the cores spin (measured on
# 2 cores: the suite took 14:00 with torch's default threads and 11:41 with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# Prepared datasets and reference log-prob caches go to a fresh folder, not the user's ~/.cache.
os.environ.setdefault("ZEPHYR_CACHE", tempfile.mkdtemp(prefix="zephyr-cache-"))


# `make test` runs pytest-xdist. Its work units are test files, so that a file's module fixtures (a whole pipeline
# run, a server, trained models) are made once, except in these files of independent heavy tests, whose tests go
# one by one to whichever worker is free (what they share is made once per run by `run_once`). The heaviest files
# go first and the many quick tests last, so that no worker is left running one long unit alone at the end.
SPREAD_FILES = ("test_distributed", "test_reliability", "test_launch", "test_sweep")
FIRST_FILES = ("test_pipeline", *SPREAD_FILES, "test_gpu_kit")


def work_unit(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    return nodeid if Path(path).stem in SPREAD_FILES else path


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))  # stable: a file keeps its order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Files as work units, in the order collected (xdist's `--dist loadgroup` cannot group by marker under pytest
    9, whose test ids no longer come from the `_nodeid` xdist rewrites; and its scope ordering, by test count, would
    leave the heaviest tests, one per unit, for last)."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:  # the one hook LoadScopeScheduling's own variants override
            return work_unit(nodeid)

    config.option.loadscopereorder = False
    return FileScheduling(config, log)


@pytest.fixture(scope="session")
def run_once(tmp_path_factory):
    """`run_once(name, make)`: a folder that `make(folder)` fills once per test run, shared by every xdist worker
    (the pattern pytest-xdist documents: their common temporary folder, and a file lock). A failed `make` leaves
    nothing, and the next test to ask tries again."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "run_once"
    root.mkdir(exist_ok=True)

    def get(name: str, make, inputs: tuple[Path, ...] = ()) -> Path:
        """`inputs`: folders whose content `make` reads (each worker builds its own tiny model, say): part of the
        name, so that a worker never takes a run made from other inputs."""
        digest = hashlib.sha256()
        for path in sorted(p for folder in inputs for p in Path(folder).rglob("*") if p.is_file()):
            digest.update(path.name.encode() + path.read_bytes())
        folder = root / f"{name}-{digest.hexdigest()[:12]}"
        with FileLock(str(folder) + ".lock"):
            if not (folder / ".done").exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                make(folder)
                (folder / ".done").touch()
        return folder

    return get


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """`<dir>/model` (1k-vocab BPE tokenizer, random-init Mistral) and `<dir>/data/{sft,prefs}`."""
    from zephyr.embedded.build import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=64)


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory):
    """The same with Mistral-7B's real SentencePiece tokenizer (32k vocab, adds BOS by itself)."""
    from zephyr.embedded.build import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_mistral"), tokenizer="mistral", hidden_size=32)


@pytest.fixture(params=["bpe", "mistral"])
def any_tiny_dir(request, tiny_dir, tiny_mistral_dir):
    return tiny_dir if request.param == "bpe" else tiny_mistral_dir

