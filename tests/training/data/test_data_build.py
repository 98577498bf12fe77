"""build_sources: mock, prepared, default; tokenizer and vocabulary checks."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from tests.training.data.data_helpers import make_documents, write_jsonl
from training.config.data import DataConfig, DatasetConfig
from training.data.build import build_sources, check_vocab_size, tokenizer_vocab_size
from training.data.ingest import CorpusSpec
from training.data.prepare import prepare_dataset
from training.data.sentencepiece_tokenizer import TokenizerSpec, train_tokenizer
from training.data.source import MockSource
from training.errors import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, corpus_file, tokenizer_dir):
    out = tmp_path_factory.mktemp("build") / "ds"
    prepare_dataset(CorpusSpec(inputs=(str(corpus_file),)), tokenizer_dir, out, workers=1)
    return out


def prepared(path, **kwargs):
    return DataConfig(kind="prepared", datasets=[DatasetConfig(str(path), 1.0)], **kwargs)


def test_mock():
    train, valid = build_sources(DataConfig(seed=3), seq_length=16, vocab_size=100)
    assert isinstance(train, MockSource) and isinstance(valid, MockSource)
    assert (train.seed, valid.seed) == (3, 4)
    assert np.array_equal(train.sample(5), MockSource(100, 16, 3).sample(5))
    assert tokenizer_vocab_size(DataConfig()) is None


def test_prepared_samples(dataset, tokenizer_dir):
    cfg = prepared(dataset, tokenizer=str(tokenizer_dir))
    assert tokenizer_vocab_size(cfg) == 400
    check_vocab_size(cfg, 400)
    train, valid = build_sources(cfg, seq_length=24, vocab_size=400)
    for source in (train, valid):
        sample = source.sample(123)
        assert sample.dtype == np.int64 and sample.shape == (25,)
        assert sample.min() >= 0 and sample.max() < 400


def test_sources_pickle_small_and_equal(dataset):
    train, _ = build_sources(prepared(dataset), seq_length=24, vocab_size=400)
    blob = pickle.dumps(train)
    assert len(blob) < 50_000  # the mapped shards are reopened, not copied
    clone = pickle.loads(blob)
    for i in (0, 99, 5_000):
        assert np.array_equal(clone.sample(i), train.sample(i))


def test_vocab_mismatch_is_a_clear_error(dataset):
    cfg = prepared(dataset)
    with pytest.raises(
        DataError, match=r"model.vocab_size is 512 but the tokenizer .* has 400 ids; set model.vocab_size: 400"
    ):
        build_sources(cfg, seq_length=24, vocab_size=512)
    with pytest.raises(DataError, match="model.vocab_size is 512"):
        check_vocab_size(cfg, 512)


def test_other_tokenizer_is_refused(dataset, corpus_file, tmp_path):
    other = tmp_path / "other-tok"
    train_tokenizer(
        CorpusSpec(inputs=(str(corpus_file),)),
        other,
        TokenizerSpec(vocab_size=400, seed=1, sample_chars=50_000),
        num_threads=1,
    )
    with pytest.raises(DataError, match="data.tokenizer .*other-tok.* is not the tokenizer"):
        build_sources(prepared(dataset, tokenizer=str(other)), seq_length=24, vocab_size=400)
    # a second dataset made with the other tokenizer cannot join the blend
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(30, seed=4))
    prepare_dataset(CorpusSpec(inputs=(str(corpus),)), other, tmp_path / "ds2", workers=1)
    cfg = DataConfig(kind="prepared", datasets=[DatasetConfig(str(dataset)), DatasetConfig(str(tmp_path / "ds2"))])
    with pytest.raises(DataError, match="ds2 was tokenized with tokenizer .* same tokenizer"):
        build_sources(cfg, seq_length=24, vocab_size=400)


def test_missing_and_damaged_datasets(dataset, tmp_path):
    with pytest.raises(DataError, match=r"prepared dataset not found: .*nowhere.*flm data prepare"):
        build_sources(prepared(tmp_path / "nowhere"), seq_length=24, vocab_size=400)
    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    (broken / "tokens-00000.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="tokens-00000.bin: shard missing or of the wrong size"):
        build_sources(prepared(broken), seq_length=24, vocab_size=400)


def test_single_document_dataset_cannot_be_split(tmp_path, tokenizer_dir):
    corpus = write_jsonl(tmp_path / "one.jsonl", make_documents(1, seed=9))
    prepare_dataset(CorpusSpec(inputs=(str(corpus),)), tokenizer_dir, tmp_path / "one", workers=1)
    with pytest.raises(DataError, match="one: has 1 document.*validation split needs at least 2"):
        build_sources(prepared(tmp_path / "one"), seq_length=8, vocab_size=400)
