"""The embedded default corpus and prepare_default_data (the dry run's data, no network)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from training.config.data import DataConfig
from training.data.build import build_sources, default_data_dir, prepare_default_data
from training.data.default_corpus import build_default_corpus, write_default_corpus
from training.data.shards import PreparedDataset
from training.data.tokenizer import load_tokenizer
from training.errors import DataError


def test_corpus_is_deterministic_prose_and_code(tmp_path):
    a, b = build_default_corpus(), build_default_corpus()
    assert a.fingerprint() == b.fingerprint()
    sources = [d["source"] for d in a.documents]
    assert any(s.startswith("pydoc_data.topics:") for s in sources)
    assert any(s.startswith("stdlib:") for s in sources)
    assert 1_000_000 < len(a.jsonl()) < 6_000_000
    written = write_default_corpus(tmp_path / "c")
    assert written.written and written.manifest["fingerprint"] == a.fingerprint()
    lines = (tmp_path / "c" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["source"] for line in lines] == sources
    assert not write_default_corpus(tmp_path / "c").written


@pytest.fixture(scope="module")
def default_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    start = time.perf_counter()
    info = prepare_default_data(out, vocab_size=512, seed=3)
    return info, time.perf_counter() - start


def test_prepare_default_data(default_data):
    info, seconds = default_data
    assert info.prepared and seconds < 60
    ds = PreparedDataset(info.dataset_dir)
    tok = load_tokenizer(info.tokenizer_dir)
    assert tok.vocab_size == info.vocab_size == 512 and ds.tokenizer_sha256 == tok.sha256 == info.tokenizer_sha256
    corpus = [json.loads(line)["text"] for line in open(info.corpus_dir / "corpus.jsonl", encoding="utf-8")]
    assert ds.num_documents == len(corpus)
    for i in (0, len(corpus) // 2, len(corpus) - 1):
        assert tok.decode(ds.document(i)[:-1]) == corpus[i]


def test_second_call_does_nothing(default_data):
    info, _ = default_data
    shard = info.dataset_dir / "tokens-00000.bin"
    before = shard.stat().st_mtime_ns
    again = prepare_default_data(info.corpus_dir.parent, vocab_size=512, seed=3)
    assert not again.prepared and again.fingerprint == info.fingerprint
    assert shard.stat().st_mtime_ns == before


def test_data_config_and_kind_default(default_data):
    info, _ = default_data
    train, valid = build_sources(info.data_config(), seq_length=64, vocab_size=512)
    via_default = DataConfig(kind="default", seed=3, default_dir=str(info.corpus_dir.parent))
    train2, valid2 = build_sources(via_default, seq_length=64, vocab_size=512)
    for i in (0, 17, 4_000):
        assert np.array_equal(train.sample(i), train2.sample(i))
        assert np.array_equal(valid.sample(i), valid2.sample(i))


def test_large_selection_extends_the_small_one_deterministically(tmp_path):
    small, large = build_default_corpus(), build_default_corpus("large")
    assert large.documents[: len(small.documents)] == small.documents
    extra = [d["source"] for d in large.documents[len(small.documents) :]]
    assert any(s.startswith("stdlib:") and "/" in s for s in extra)  # recursive: packages of the stdlib
    assert not any("site-packages/" in s for s in extra if s.startswith("stdlib:"))
    assert len(extra) == len(set(extra))
    chars = sum(len(d["text"]) for d in large.documents)
    assert 10 * sum(len(d["text"]) for d in small.documents) < chars <= 60_000_000
    assert build_default_corpus("large").fingerprint() == large.fingerprint()
    with pytest.raises(DataError, match="choose one of small, large"):
        build_default_corpus("huge")


def test_large_selection_is_cached_beside_the_small_one():
    assert default_data_dir(DataConfig(kind="default", default_dir="/c")) == Path("/c")
    assert default_data_dir(DataConfig(kind="default", default_dir="/c", default_corpus="large")) == Path("/c/large")
