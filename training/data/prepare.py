"""``flm data prepare``: corpus -> tokenized, packed shards + index + manifest (see ``shards``).

Pipeline: the main process streams documents (``ingest.iter_documents``) and groups them into
tasks of about ``TASK_CHARS`` characters; ``workers`` processes encode the tasks with the
tokenizer (sentencepiece or a Hugging Face ``tokenizer.json``, no special tokens added) and append
``eos`` to every document; the main process writes the results in task order, so the output does
not depend on the number of workers. At most ``2 x workers``
tasks are in flight, which bounds memory for inputs larger than memory.

Idempotence and interruption: the manifest records a fingerprint of the corpus contents, the
reading settings and the tokenizer's SHA-256. A re-run whose fingerprint matches the existing
output does nothing. Output is written into a staging directory and renamed into place when
complete, so an interrupted run leaves no partial dataset and can simply be run again.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.fsutil import output_lock, read_json, sha256_json, staging_dir, write_json
from training.data.ingest import CorpusSpec, corpus_fingerprint, describe_source, iter_documents, resolve_files
from training.data.shards import (
    DATASET_FORMAT,
    DATASET_FORMAT_VERSION,
    DEFAULT_SHARD_TOKENS,
    HF_TOKENIZER_COPY,
    INDEX_FILE,
    MANIFEST_FILE,
    TOKENIZER_COPY,
    ShardWriter,
    token_dtype,
)
from training.data.tokenizer import load_tokenizer
from training.data.tokenizer_base import BaseTokenizer
from training.errors import DataError

#: characters of text per worker task: large enough to amortise inter-process overhead
TASK_CHARS = 1 << 20
TASK_MAX_DOCS = 4096


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: dict[str, Any]
    #: False when the output was already up to date (nothing was done)
    prepared: bool


# --- worker side -------------------------------------------------------------------------------
_TOKENIZER: BaseTokenizer | None = None
_EOS = 0
_DTYPE = np.dtype("<u2")


def _init_worker(tokenizer: BaseTokenizer, dtype: str, pooled: bool = False) -> None:
    global _TOKENIZER, _EOS, _DTYPE
    if pooled:  # one thread per worker process, as sentencepiece's num_threads=1 (no oversubscription)
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _TOKENIZER = tokenizer
    _EOS = tokenizer.eos_id
    _DTYPE = np.dtype(dtype)


def _encode_task(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``texts``: (concatenated ids with eos after each document, per-document lengths)."""
    assert _TOKENIZER is not None, "worker not initialised"
    ids = _TOKENIZER.encode_batch(texts)
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    out = np.empty(total, dtype=_DTYPE)
    ends = np.cumsum(lengths) - 1
    content = np.ones(total, dtype=bool)
    content[ends] = False
    out[content] = np.fromiter(itertools.chain.from_iterable(ids), dtype=_DTYPE, count=total - len(ids))
    out[ends] = _EOS
    return out, lengths


# --- main side ---------------------------------------------------------------------------------
def _tasks(spec: CorpusSpec, files, task_chars: int) -> Iterator[tuple[int, list[str], int]]:
    """(file index, texts, skipped rows) tasks of about ``task_chars`` characters from one file each."""
    pending: list[str] = []
    chars = skipped = 0
    current = None
    for batch in iter_documents(spec, files):
        if current is not None and batch.file_index != current and (pending or skipped):
            yield current, pending, skipped
            pending, chars, skipped = [], 0, 0
        current = batch.file_index
        skipped += batch.skipped
        for text in batch.texts:
            pending.append(text)
            chars += len(text)
            if chars >= task_chars or len(pending) >= TASK_MAX_DOCS:
                yield current, pending, skipped
                pending, chars, skipped = [], 0, 0
    if current is not None and (pending or skipped):
        yield current, pending, skipped


def _start_method() -> str:
    # fork: workers inherit the loaded modules instead of re-importing torch (seconds per worker).
    # Workers only run the tokenizer (sentencepiece or the Rust tokenizers) and numpy, so threads the
    # parent may have (pyarrow pools) and their locks are never needed in a child.
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _encoded(
    spec: CorpusSpec, files, tokenizer: BaseTokenizer, dtype: np.dtype, task_chars: int, workers: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(file index, skipped, tokens, lengths) per task, in task order."""
    init_args = (tokenizer, dtype.str)
    if workers <= 1:
        _init_worker(*init_args)
        for file_index, texts, skipped in _tasks(spec, files, task_chars):
            yield file_index, skipped, *_encode_task(texts)
        return
    context = multiprocessing.get_context(_start_method())
    with context.Pool(workers, initializer=_init_worker, initargs=(*init_args, True)) as pool:
        in_flight: collections.deque = collections.deque()
        for file_index, texts, skipped in _tasks(spec, files, task_chars):
            in_flight.append((file_index, skipped, pool.apply_async(_encode_task, (texts,))))
            if len(in_flight) >= 2 * workers:
                file_index, skipped, result = in_flight.popleft()
                yield file_index, skipped, *result.get()
        while in_flight:
            file_index, skipped, result = in_flight.popleft()
            yield file_index, skipped, *result.get()


def save_tokenizer_copy(tok: BaseTokenizer, out_dir: Path) -> str:
    """Save the copy of ``tok`` a prepared dataset carries; returns its name in ``out_dir``:
    ``tokenizer.model`` for sentencepiece (as before), the directory ``tokenizer`` for Hugging Face
    tokenizers (their files, unchanged)."""
    if tok.kind == "sentencepiece":
        tok.save(out_dir)
        return TOKENIZER_COPY
    tok.save(out_dir / HF_TOKENIZER_COPY)
    return HF_TOKENIZER_COPY


def _tokenizers_version() -> str | None:
    try:
        import tokenizers  # heavy: only to prepare a corpus, not in every trainer process
    except ImportError:
        return None
    return tokenizers.__version__


def dataset_fingerprint(corpus_fp: str, tokenizer_sha256: str) -> str:
    return sha256_json(
        {
            "format": DATASET_FORMAT,
            "version": DATASET_FORMAT_VERSION,
            "corpus": corpus_fp,
            "tokenizer": tokenizer_sha256,
            "eos_after_document": True,
        }
    )


def _up_to_date(out_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    manifest = read_json(out_dir / MANIFEST_FILE)
    if manifest is None or manifest.get("fingerprint") != fingerprint:
        return None
    for record in manifest.get("shards", []):
        file = out_dir / record["file"]
        if not file.is_file() or file.stat().st_size != record["tokens"] * np.dtype(manifest["dtype"]).itemsize:
            return None
    return manifest


def prepare_dataset(
    corpus: CorpusSpec,
    tokenizer: str | Path | BaseTokenizer,
    out_dir: str | Path,
    *,
    workers: int = 2,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    force: bool = False,
    task_chars: int = TASK_CHARS,
) -> PrepareResult:
    """Tokenize ``corpus`` into a prepared dataset at ``out_dir`` (idempotent, atomic).

    ``tokenizer`` is anything ``load_tokenizer`` reads (a project tokenizer directory or ``.model``
    file, a Hugging Face tokenizer directory or ``tokenizer.json``) or a loaded tokenizer. If
    ``out_dir`` holds a dataset with the same fingerprint, nothing is done; if it holds a different one,
    DataError unless ``force``. Raises DataError for every input problem (see ``ingest``) and for
    an empty corpus.
    """
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    import datasets  # heavy: only to prepare a corpus, not in every trainer process
    import sentencepiece as spm

    out_dir = Path(out_dir)
    tok = tokenizer if isinstance(tokenizer, BaseTokenizer) else load_tokenizer(tokenizer)
    with output_lock(out_dir):
        old = read_json(out_dir / MANIFEST_FILE)
        known = {f["path"]: f for f in old["source"]["files"]} if old and "source" in old else None
        files = resolve_files(corpus, known)
        corpus_fp = corpus_fingerprint(corpus, files)
        fingerprint = dataset_fingerprint(corpus_fp, tok.sha256)
        done = _up_to_date(out_dir, fingerprint)
        if done is not None:
            return PrepareResult(out_dir, done, False)
        if out_dir.exists() and any(out_dir.iterdir()) and not force:
            if old is None:
                what = "other files"
            elif old.get("fingerprint") == fingerprint:
                what = "a damaged copy of this dataset (shard files do not match its manifest)"
            else:
                what = "a dataset prepared from other inputs or another tokenizer"
            raise DataError(
                f"{out_dir} already holds {what}; choose a new --out directory or pass --force to replace it"
            )

        source = describe_source(corpus, files)
        dtype = token_dtype(tok.vocab_size)
        n_files = max(1, len(files))
        per_file = [{"documents": 0, "tokens": 0, "skipped_empty": 0} for _ in range(n_files)]
        with staging_dir(out_dir) as tmp:
            writer = ShardWriter(tmp, dtype, shard_tokens)
            try:
                for file_index, skipped, tokens, lengths in _encoded(corpus, files, tok, dtype, task_chars, workers):
                    writer.add(tokens, lengths)
                    stats = per_file[file_index]
                    stats["documents"] += int(lengths.size)
                    stats["tokens"] += int(tokens.size)
                    stats["skipped_empty"] += skipped
                shards = writer.finish()
            except BaseException:
                writer.abort()
                raise
            if writer.total_docs == 0:
                raise DataError(
                    f"{source}: the corpus is empty (no non-empty documents); check the inputs and --text-field"
                )
            copy = save_tokenizer_copy(tok, tmp)
            file_records = [dict(f.to_json(), **per_file[i]) for i, f in enumerate(files)]
            manifest = {
                "format": DATASET_FORMAT,
                "version": DATASET_FORMAT_VERSION,
                "fingerprint": fingerprint,
                "corpus_fingerprint": corpus_fp,
                "source": {"description": source, "spec": corpus.to_json(), "files": file_records},
                "tokenizer": {
                    "kind": tok.kind,
                    "sha256": tok.sha256,
                    "vocab_size": tok.vocab_size,
                    "eos_id": tok.eos_id,
                    "special_ids": tok.special_ids(),
                    "file": copy,
                    "origin": str(tok.path) if tok.path else None,
                },
                "dtype": dtype.str,
                "documents": writer.total_docs,
                "tokens": writer.total_tokens,
                "skipped_empty_documents": sum(f["skipped_empty"] for f in per_file),
                "eos_after_document": True,
                "index": {"file": INDEX_FILE, "dtype": "<i8", "meaning": "exclusive end offset of each document"},
                "shards": shards,
                "software": {
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                    "sentencepiece": spm.__version__,
                    "tokenizers": _tokenizers_version(),
                    "datasets": datasets.__version__,
                    "platform": sys.platform,
                },
            }
            write_json(tmp / MANIFEST_FILE, manifest)
    return PrepareResult(out_dir, manifest, True)
