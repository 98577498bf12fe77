"""Tokenizer training: special ids, byte fallback, exact round trip, hash, idempotence, bad sizes."""

from __future__ import annotations

import json

import pytest

from tests.training.data.data_helpers import write_jsonl
from training.data.ingest import CorpusSpec
from training.data.sentencepiece_tokenizer import META_FILE, MIN_VOCAB_SIZE, SPECIAL_IDS, TokenizerSpec, train_tokenizer
from training.data.tokenizer import load_tokenizer
from training.errors import DataError


def test_trained_tokenizer_contract(tokenizer_dir, corpus_docs):
    tok = load_tokenizer(tokenizer_dir)
    meta = json.loads((tokenizer_dir / META_FILE).read_text())
    assert tok.vocab_size == 400 == meta["vocab_size"]
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == tuple(SPECIAL_IDS.values())
    assert meta["sha256"] == tok.sha256 and len(tok.sha256) == 64
    assert meta["training"]["sampled_documents"] == len(corpus_docs)
    for doc in corpus_docs[:50] + ["unseen: ĳ ∑ 🚀 tabs\t\tand   spaces\n\n  indented", " leading space"]:
        assert tok.decode(tok.encode(doc)) == doc
    # characters never seen in training are bytes, not unk
    assert tok.unk_id not in tok.encode("ĳ ∑ 🚀")


def test_same_input_same_hash_and_second_run_does_nothing(tmp_path, corpus_file, tokenizer_dir):
    spec = CorpusSpec(inputs=(str(corpus_file),))
    first = train_tokenizer(spec, tmp_path / "t", TokenizerSpec(vocab_size=400), num_threads=2)
    assert first.trained and first.tokenizer.sha256 == load_tokenizer(tokenizer_dir).sha256
    mtime = (tmp_path / "t" / "tokenizer.model").stat().st_mtime_ns
    again = train_tokenizer(spec, tmp_path / "t", TokenizerSpec(vocab_size=400))
    assert not again.trained and (tmp_path / "t" / "tokenizer.model").stat().st_mtime_ns == mtime


def test_different_settings_need_force(tmp_path, corpus_file):
    spec = CorpusSpec(inputs=(str(corpus_file),))
    train_tokenizer(spec, tmp_path / "t", TokenizerSpec(vocab_size=300), num_threads=1)
    with pytest.raises(DataError, match="different tokenizer.*--force"):
        train_tokenizer(spec, tmp_path / "t", TokenizerSpec(vocab_size=320), num_threads=1)
    result = train_tokenizer(spec, tmp_path / "t", TokenizerSpec(vocab_size=320), force=True, num_threads=1)
    assert result.trained and load_tokenizer(tmp_path / "t").vocab_size == 320


def test_unigram(tmp_path, corpus_file, corpus_docs):
    result = train_tokenizer(
        CorpusSpec(inputs=(str(corpus_file),)),
        tmp_path / "u",
        TokenizerSpec(vocab_size=350, model_type="unigram"),
        num_threads=1,
    )
    assert result.tokenizer.vocab_size == 350
    assert result.tokenizer.decode(result.tokenizer.encode(corpus_docs[0])) == corpus_docs[0]


def test_sample_is_seeded_and_bounded(tmp_path, corpus_file):
    spec = CorpusSpec(inputs=(str(corpus_file),))
    a = train_tokenizer(spec, tmp_path / "a", TokenizerSpec(vocab_size=300, sample_chars=20_000, seed=3), num_threads=1)
    b = train_tokenizer(spec, tmp_path / "b", TokenizerSpec(vocab_size=300, sample_chars=20_000, seed=3), num_threads=1)
    c = train_tokenizer(spec, tmp_path / "c", TokenizerSpec(vocab_size=300, sample_chars=20_000, seed=4), num_threads=1)
    assert 16_000 <= a.meta["training"]["sampled_chars"] < 20_000 + 2_000
    assert a.meta["training"]["sampled_documents"] < 400
    assert a.tokenizer.sha256 == b.tokenizer.sha256
    assert a.meta["training"]["sampled_chars"] != c.meta["training"]["sampled_chars"]


def test_vocab_too_small_for_special_tokens(tmp_path, corpus_file):
    with pytest.raises(DataError) as info:
        train_tokenizer(CorpusSpec(inputs=(str(corpus_file),)), tmp_path / "t", TokenizerSpec(vocab_size=100))
    assert "special tokens" in str(info.value) and str(MIN_VOCAB_SIZE) in str(info.value)
    assert not (tmp_path / "t").exists()


def test_vocab_too_small_for_characters(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["".join(chr(0x4E00 + i) for i in range(60)) * 3])
    with pytest.raises(DataError, match="too small for .*c.jsonl.*use vocab_size >= "):
        train_tokenizer(CorpusSpec(inputs=(str(corpus),)), tmp_path / "t", TokenizerSpec(vocab_size=280))


def test_vocab_too_large_for_corpus(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["hello world"] * 5)
    with pytest.raises(DataError, match="too large for the sample of .*c.jsonl"):
        train_tokenizer(CorpusSpec(inputs=(str(corpus),)), tmp_path / "t", TokenizerSpec(vocab_size=2000))


def test_empty_corpus(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text('{"text": ""}\n')
    with pytest.raises(DataError, match="empty.jsonl: the corpus is empty"):
        train_tokenizer(CorpusSpec(inputs=(str(corpus),)), tmp_path / "t", TokenizerSpec(vocab_size=300))


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.model: not a sentencepiece model"):
        load_tokenizer(tmp_path / "junk.model")
