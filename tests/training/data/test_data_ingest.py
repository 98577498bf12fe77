"""Reading corpora: formats, order, and a clear error naming the file for every bad input."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data.ingest import CorpusSpec, corpus_fingerprint, iter_documents, resolve_files
from training.errors import DataError


def read_all(spec: CorpusSpec) -> list[str]:
    files = resolve_files(spec)
    return [t for batch in iter_documents(spec, files, batch_rows=3) for t in batch.texts]


def test_formats_and_order(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"body": "two"}\n\n{"body": "three"}\n', encoding="utf-8")
    (tmp_path / "a.txt").write_text("one\nstill one", encoding="utf-8")
    pq.write_table(pa.table({"body": ["four", "five"], "n": [1, 2]}), tmp_path / "c.parquet")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"body": "six"}\n')
    (tmp_path / "notes.csv").write_text("ignored in directory mode")
    spec = CorpusSpec(inputs=(str(tmp_path),), text_field="body")
    assert read_all(spec) == ["one\nstill one", "two", "three", "four", "five", "six"]


def test_text_units(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("p1 l1\np1 l2\n\np2\n", encoding="utf-8")
    assert read_all(CorpusSpec(inputs=(str(path),), text_unit="document")) == ["p1 l1\np1 l2\n\np2\n"]
    assert read_all(CorpusSpec(inputs=(str(path),), text_unit="paragraph")) == ["p1 l1\np1 l2", "p2\n"]
    assert read_all(CorpusSpec(inputs=(str(path),), text_unit="line")) == ["p1 l1", "p1 l2", "p2"]


def test_empty_texts_are_skipped_and_counted(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text('{"text": ""}\n{"text": "  \\n"}\n{"text": "x"}\n', encoding="utf-8")
    spec = CorpusSpec(inputs=(str(path),))
    batches = list(iter_documents(spec, resolve_files(spec)))
    assert [t for b in batches for t in b.texts] == ["x"]
    assert sum(b.skipped for b in batches) == 2


def test_fingerprint_follows_content_not_name(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"text": "same"}\n')
    b.write_text('{"text": "same"}\n')
    fp = [corpus_fingerprint(s, resolve_files(s)) for s in (CorpusSpec(inputs=(str(a),)), CorpusSpec(inputs=(str(b),)))]
    assert fp[0] == fp[1]
    b.write_text('{"text": "different"}\n')
    spec = CorpusSpec(inputs=(str(b),))
    assert corpus_fingerprint(spec, resolve_files(spec)) != fp[0]
    assert (
        corpus_fingerprint(CorpusSpec(inputs=(str(a),), text_field="body"), resolve_files(CorpusSpec(inputs=(str(a),))))
        != fp[0]
    )


def expect_error(spec: CorpusSpec, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        read_all(spec)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_path(tmp_path):
    expect_error(CorpusSpec(inputs=(str(tmp_path / "nope.jsonl"),)), "not found", "nope.jsonl")


def test_glob_without_match(tmp_path):
    expect_error(CorpusSpec(inputs=(str(tmp_path / "*.jsonl"),)), "matches no files", "*.jsonl")


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    expect_error(CorpusSpec(inputs=(str(path),)), str(path), "--format")


def test_line_that_is_not_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "fine too"}\nthis is not json\n', encoding="utf-8")
    expect_error(CorpusSpec(inputs=(str(path),)), f"{path}:3", "not valid JSON")


def test_object_without_text_field(tmp_path):
    path = tmp_path / "nofield.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "where is text"}\n', encoding="utf-8")
    expect_error(CorpusSpec(inputs=(str(path),)), f"{path}:2", "no field 'text'", "body", "--text-field")


def test_file_without_text_field_anywhere(tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text('{"content": "a"}\n', encoding="utf-8")
    expect_error(CorpusSpec(inputs=(str(path),)), f"{path}:1", "no field 'text'", "content")


def test_non_string_text(tmp_path):
    path = tmp_path / "num.jsonl"
    path.write_text('{"text": "a"}\n{"text": 5}\n', encoding="utf-8")
    expect_error(CorpusSpec(inputs=(str(path),)), str(path), "expected a string")


def test_invalid_utf8_jsonl(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    expect_error(CorpusSpec(inputs=(str(path),)), f"{path}:2", "not valid UTF-8", "0xe9")


def test_invalid_utf8_text(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine line\nna\xefve\n")
    expect_error(CorpusSpec(inputs=(str(path),)), f"{path}:2", "not valid UTF-8")


def test_parquet_without_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"content": ["a"]}), path)
    expect_error(CorpusSpec(inputs=(str(path),)), str(path), "no column 'text'", "content")


def test_parquet_null_text(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), path)
    expect_error(CorpusSpec(inputs=(str(path),)), str(path), "row 1")


def test_spec_needs_inputs():
    with pytest.raises(DataError, match="no corpus given"):
        CorpusSpec(inputs=())


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    spec = CorpusSpec(hub_dataset="owner/name")
    with pytest.raises(DataError, match="owner/name.*offline"):
        list(iter_documents(spec, []))


def test_json_array_file(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert read_all(CorpusSpec(inputs=(str(path),))) == ["a", "b"]
