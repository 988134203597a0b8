"""Shared fixtures: the embedded tiny model (both tokenizers), built once per test session."""

from __future__ import annotations

import os
import tempfile

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


# `make test` runs pytest-xdist with --dist loadgroup. Each file is one group, so its module fixtures (a whole
# pipeline run, a server, trained models) are made once, except these heavy files of independent tests: theirs go
# test by test to whichever worker is free, so that no worker is left running one long file alone at the end.
SPREAD_FILES = {"test_launch", "test_sweep", "test_distributed"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ not in SPREAD_FILES:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


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
