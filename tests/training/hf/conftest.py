"""Fixtures for the Hugging Face interoperability tests (offline; tiny models built locally)."""

from __future__ import annotations

import os

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="module")
def _tiny_models(one_thread):
    """Every HF test runs tiny models: one intra-op thread."""


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory):
    """A project (sentencepiece BPE, 500 ids) tokenizer trained on IQ-style text; its directory."""
    from tests.training.hf.hf_helpers import train_sentencepiece

    return train_sentencepiece(tmp_path_factory.mktemp("tok") / "tokenizer")
