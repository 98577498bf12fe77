"""Shared fixtures: small synthetic corpora written on the fly (tests never download data)."""

from __future__ import annotations

from pathlib import Path

import pytest

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.training.data.data_helpers import make_documents, write_jsonl
from training.data.ingest import CorpusSpec
from training.data.sentencepiece_tokenizer import TokenizerSpec, train_tokenizer


@pytest.fixture(scope="session")
def corpus_docs() -> list[str]:
    return make_documents(400, seed=1)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus_docs) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", corpus_docs)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_file) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(CorpusSpec(inputs=(str(corpus_file),)), out, TokenizerSpec(vocab_size=400), num_threads=1)
    return out
