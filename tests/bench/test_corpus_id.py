"""bench/corpus_id.py: a bench output directory holds runs of one corpus; adding runs of another is
refused in one line."""

from __future__ import annotations

import json

import pytest

from bench.corpus_id import claim, describe


def _record(fingerprint: str) -> dict:
    return {
        "selection": "pinned",
        "fingerprint": fingerprint,
        "dataset_fingerprint": "d" * 64,
        "vocab_size": 2048,
        "documents": 3,
        "tokens": 2_500_000,
        "python": "3.11.7",
        "pinned_sources": ["alpha==1.0"],
    }


def test_claim_records_the_corpus_and_refuses_another(tmp_path):
    a, b = _record("a" * 64), _record("b" * 64)
    claim(tmp_path, a)
    assert json.loads((tmp_path / "corpus.json").read_text()) == a
    (tmp_path / "scratch-s1").mkdir()
    claim(tmp_path, a)  # same corpus: the runs may be kept and added to
    with pytest.raises(SystemExit) as refused:
        claim(tmp_path, b)
    message = str(refused.value)
    assert "\n" not in message
    assert f"has corpus pinned {'a' * 16} but this one is corpus pinned {'b' * 16}" in message
    assert "not comparable" in message


def test_claim_refuses_runs_without_a_recorded_corpus(tmp_path):
    (tmp_path / "grown-global-f0.35-s1234").mkdir()
    with pytest.raises(SystemExit, match="runs of an earlier invocation.* has no recorded corpus fingerprint"):
        claim(tmp_path, _record("a" * 64))
    assert not (tmp_path / "corpus.json").exists()


def test_describe_is_one_line():
    line = describe(_record("a" * 64))
    assert line.startswith(f"corpus pinned: fingerprint {'a' * 64} (3 documents, 2.5M tokens at vocab 2048")
