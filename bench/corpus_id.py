"""Which corpus a benchmark's runs trained on: built once before the runs, its fingerprint printed,
recorded in the output directory (``corpus.json``) and in the result files, and checked wherever
runs of several invocations end up in one table.

- ``prepare(data, vocab_size)``: builds (or finds up to date) a ``kind: default`` data section's
  corpus, tokenizer and shards, so that the training jobs started next find them ready, and returns
  the record: selection, corpus fingerprint, prepared-dataset fingerprint, documents, tokens, Python;
- ``claim(out, record)``: the output directory's corpus. A directory that already holds a
  ``corpus.json`` of another fingerprint, or runs without one, is refused (``SystemExit`` with one
  line): losses on different corpora are not comparable (issue 27: the same bench moved from 3.16
  to 3.40 between two installs of the old, installation-dependent corpus).
"""

from __future__ import annotations

import json
from pathlib import Path

RECORD = "corpus.json"


def prepare(data: dict, vocab_size: int) -> dict:
    """The corpus record of ``data`` (a run's ``data:`` section, ``kind: default``) at ``vocab_size``."""
    # local: the bench scripts' --help and argument errors come before the data pipeline's imports
    from training.config.data import DataConfig
    from training.config_base import from_dict
    from training.data.build import prepare_configured_default_data

    cfg = from_dict(DataConfig, data, "data")
    if cfg.kind != "default":
        raise SystemExit(f"bench: data.kind {cfg.kind!r} has no default corpus to fingerprint; use kind: default")
    info = prepare_configured_default_data(cfg, vocab_size)
    corpus = json.loads((info.corpus_dir / "manifest.json").read_text())
    dataset = json.loads((info.dataset_dir / "manifest.json").read_text())
    return {
        "selection": cfg.default_corpus,
        "fingerprint": corpus["fingerprint"],
        "dataset_fingerprint": info.fingerprint,
        "vocab_size": vocab_size,
        "documents": corpus["documents"],
        "tokens": dataset["tokens"],
        "python": corpus["python"],
        "pinned_sources": [s["spec"] for s in corpus.get("pinned_sources", [])],
    }


def describe(record: dict) -> str:
    """One line for the bench's output."""
    return (
        f"corpus {record['selection']}: fingerprint {record['fingerprint']} ({record['documents']} documents, "
        f"{record['tokens'] / 1e6:.1f}M tokens at vocab {record['vocab_size']}; dataset {record['dataset_fingerprint'][:16]})"
    )


def _refuse(what: str, theirs: dict | None, ours: dict) -> SystemExit:
    """The one-line refusal to put ``what``'s runs (corpus ``theirs``) beside runs on ``ours``."""
    held = f"corpus {theirs['selection']} {theirs['fingerprint'][:16]}" if theirs else "no recorded corpus fingerprint"
    return SystemExit(
        f"bench: {what} has {held} but this one is corpus {ours['selection']} {ours['fingerprint'][:16]}; losses on "
        "different corpora are not comparable: use a new --out (or the corpus those runs used)"
    )


def claim(out: Path, record: dict) -> None:
    """Record ``record`` as ``out``'s corpus; refuse an ``out`` whose runs used another (module docstring)."""
    path = out / RECORD
    if path.is_file():
        held = json.loads(path.read_text())
        if held.get("fingerprint") != record["fingerprint"]:
            raise _refuse(str(out), held, record)
        return
    if any(p.is_dir() for p in out.iterdir()):
        raise _refuse(f"{out} (runs of an earlier invocation)", None, record)
    path.write_text(json.dumps(record, indent=2) + "\n")
