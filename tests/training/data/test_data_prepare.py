"""flm data prepare: exact round trip, layout, idempotence, safe re-run after interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.training.data.data_helpers import make_documents, write_jsonl
from training.data.ingest import CorpusSpec
from training.data.prepare import prepare_dataset
from training.data.shards import PreparedDataset, ShardWriter, token_dtype
from training.data.tokenizer import load_tokenizer
from training.errors import DataError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_file, tokenizer_dir):
    out = tmp_path_factory.mktemp("prep") / "ds"
    # small tasks and shards: several tasks in flight and several shards, on a small corpus
    return prepare_dataset(
        CorpusSpec(inputs=(str(corpus_file),)), tokenizer_dir, out, workers=2, shard_tokens=4_000, task_chars=5_000
    )


def test_round_trip_decodes_to_original_text(prepared, corpus_docs, tokenizer_dir):
    ds = PreparedDataset(prepared.out_dir)
    tok = load_tokenizer(tokenizer_dir)
    assert ds.num_documents == len(corpus_docs)
    for i, doc in enumerate(corpus_docs):
        tokens = ds.document(i)
        assert tokens[-1] == tok.eos_id and tok.eos_id not in tokens[:-1]
        assert tok.decode(tokens[:-1]) == doc


def test_layout_and_manifest(prepared, corpus_file, tokenizer_dir):
    ds = PreparedDataset(prepared.out_dir)
    m = prepared.manifest
    assert ds.dtype == np.dtype("<u2") and m["dtype"] == "<u2"
    assert len(m["shards"]) > 3
    assert sum(s["tokens"] for s in m["shards"]) == m["tokens"] == ds.num_tokens == int(ds.doc_ends[-1])
    assert m["tokenizer"]["sha256"] == load_tokenizer(tokenizer_dir).sha256
    assert (prepared.out_dir / "tokenizer.model").read_bytes() == load_tokenizer(tokenizer_dir).model_bytes
    [file] = m["source"]["files"]
    assert file["path"] == str(corpus_file) and file["documents"] == m["documents"] and file["tokens"] == m["tokens"]
    # no document straddles a shard boundary
    boundaries = np.cumsum([s["tokens"] for s in m["shards"]])
    assert set(boundaries.tolist()) <= set(ds.doc_ends.tolist())
    assert json.loads((prepared.out_dir / "manifest.json").read_text())["fingerprint"] == m["fingerprint"]


def test_one_worker_gives_identical_output(prepared, corpus_file, tokenizer_dir, tmp_path):
    single = prepare_dataset(
        CorpusSpec(inputs=(str(corpus_file),)), tokenizer_dir, tmp_path / "one", workers=1, shard_tokens=1 << 20
    )
    a, b = PreparedDataset(prepared.out_dir), PreparedDataset(single.out_dir)
    assert single.manifest["fingerprint"] == prepared.manifest["fingerprint"]
    assert np.array_equal(a.tokens(0, a.num_tokens), b.tokens(0, b.num_tokens))
    assert np.array_equal(a.doc_ends, b.doc_ends)


def test_rerun_does_nothing(prepared, corpus_file, tokenizer_dir):
    shard = prepared.out_dir / prepared.manifest["shards"][0]["file"]
    before = shard.stat().st_mtime_ns
    again = prepare_dataset(CorpusSpec(inputs=(str(corpus_file),)), tokenizer_dir, prepared.out_dir, workers=2)
    assert not again.prepared and shard.stat().st_mtime_ns == before


def test_changed_input_needs_force(tmp_path, tokenizer_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(20, seed=5))
    spec = CorpusSpec(inputs=(str(corpus),))
    first = prepare_dataset(spec, tokenizer_dir, tmp_path / "ds", workers=1)
    write_jsonl(corpus, make_documents(21, seed=5))
    with pytest.raises(DataError, match="ds already holds a dataset prepared from other inputs.*--force"):
        prepare_dataset(spec, tokenizer_dir, tmp_path / "ds", workers=1)
    second = prepare_dataset(spec, tokenizer_dir, tmp_path / "ds", workers=1, force=True)
    assert second.prepared and second.manifest["documents"] == first.manifest["documents"] + 1


class Crash(RuntimeError):
    pass


def test_interrupted_run_leaves_nothing_and_reruns(tmp_path, tokenizer_dir, monkeypatch):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(60, seed=2))
    spec = CorpusSpec(inputs=(str(corpus),))
    calls = {"n": 0}
    real_add = ShardWriter.add

    def crashing_add(self, tokens, lengths):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash("simulated interruption")
        real_add(self, tokens, lengths)

    monkeypatch.setattr(ShardWriter, "add", crashing_add)
    with pytest.raises(Crash):
        prepare_dataset(spec, tokenizer_dir, tmp_path / "ds", workers=2, task_chars=2_000)
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.tmp-*"))
    # a hard kill leaves a staging directory behind; the next run removes it
    stale = tmp_path / ".ds.tmp-12345-deadbeef"
    stale.mkdir()
    (stale / "tokens-00000.bin").write_bytes(b"partial")
    monkeypatch.setattr(ShardWriter, "add", real_add)
    result = prepare_dataset(spec, tokenizer_dir, tmp_path / "ds", workers=2, task_chars=2_000)
    assert result.prepared and PreparedDataset(tmp_path / "ds").num_documents == 60
    assert not stale.exists()


def test_empty_corpus_is_an_error(tmp_path, tokenizer_dir):
    corpus = tmp_path / "blank.jsonl"
    corpus.write_text('{"text": " "}\n{"text": ""}\n')
    with pytest.raises(DataError, match="blank.jsonl: the corpus is empty"):
        prepare_dataset(CorpusSpec(inputs=(str(corpus),)), tokenizer_dir, tmp_path / "ds", workers=1)
    assert not (tmp_path / "ds").exists()


def test_bad_line_fails_the_run_and_names_it(tmp_path, tokenizer_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(10, seed=3))
    with open(corpus, "a") as f:
        f.write("{broken\n")
    with pytest.raises(DataError, match=r"c.jsonl:11: not valid JSON"):
        prepare_dataset(CorpusSpec(inputs=(str(corpus),)), tokenizer_dir, tmp_path / "ds", workers=2)
    assert not (tmp_path / "ds").exists()


def test_reader_rejects_damaged_dataset(prepared, tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        PreparedDataset(tmp_path)
    with pytest.raises(DataError, match="prepared dataset not found"):
        PreparedDataset(tmp_path / "missing")


def test_token_dtype():
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=40), shard=st.integers(1, 50), split=st.integers(1, 5))
def test_shard_writer_keeps_documents_whole(tmp_path_factory, lengths, shard, split):
    out = tmp_path_factory.mktemp("w")
    lengths = np.array(lengths)
    tokens = np.arange(lengths.sum()) % 1000
    writer = ShardWriter(out, np.dtype("<u2"), shard)
    for part in np.array_split(np.arange(len(lengths)), split):
        if part.size:
            lo, hi = lengths[: part[0]].sum(), lengths[: part[-1] + 1].sum()
            writer.add(tokens[lo:hi], lengths[part])
    shards = writer.finish()
    written = np.concatenate([np.fromfile(out / s["file"], dtype="<u2") for s in shards])
    assert np.array_equal(written, tokens)
    ends = np.fromfile(out / "doc_ends.bin", dtype="<i8")
    assert np.array_equal(ends, np.cumsum(lengths))
    boundaries = np.cumsum([s["tokens"] for s in shards])
    assert set(boundaries.tolist()) <= set(ends.tolist())
    assert all(s["tokens"] <= shard or s["documents"] == 1 for s in shards)


def test_damaged_output_is_reported_and_rebuilt_with_force(tmp_path, tokenizer_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(15, seed=6))
    spec = CorpusSpec(inputs=(str(corpus),))
    prepare_dataset(spec, tokenizer_dir, tmp_path / "ds", workers=1)
    shard = tmp_path / "ds" / "tokens-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="damaged copy of this dataset.*--force"):
        prepare_dataset(spec, tokenizer_dir, tmp_path / "ds", workers=1)
    assert prepare_dataset(spec, tokenizer_dir, tmp_path / "ds", workers=1, force=True).prepared
    assert PreparedDataset(tmp_path / "ds").num_documents == 15
