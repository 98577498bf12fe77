"""Packed token shards: the on-disk layout of a prepared dataset, its writer and its reader.

A prepared dataset directory contains

* ``tokens-NNNNN.bin`` -- shards of token ids, little-endian ``uint16`` when the vocabulary has at
  most 65536 ids, else ``uint32``. Concatenated in order they form one token stream in which every
  document is followed by the tokenizer's ``eos`` id. A document never spans two shards.
* ``doc_ends.bin`` -- the index: little-endian ``int64``, one entry per document, the exclusive end
  offset of the document (including its ``eos``) in the concatenated stream. Strictly increasing;
  the last entry equals the number of tokens.
* ``tokenizer.model`` (sentencepiece) or ``tokenizer/`` (a Hugging Face tokenizer's files) -- a copy
  of the tokenizer that produced the ids (so the directory is self-contained) and
  ``manifest.json`` with counts, hashes, the corpus fingerprint and the tokenizer's kind and
  SHA-256 (``manifest["tokenizer"]["file"]`` names the copy).

``PreparedDataset`` maps the shards read-only and returns token slices of the stream.
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from training.data.fsutil import read_json
from training.errors import DataError

MANIFEST_FILE = "manifest.json"
INDEX_FILE = "doc_ends.bin"
TOKENIZER_COPY = "tokenizer.model"
#: a Hugging Face tokenizer's copy (its files, unchanged) is this directory instead
HF_TOKENIZER_COPY = "tokenizer"
DATASET_FORMAT = "flm-packed-tokens"
DATASET_FORMAT_VERSION = 1
#: default shard size in tokens (256 MiB of uint16)
DEFAULT_SHARD_TOKENS = 1 << 27


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned little-endian dtype that holds ids ``0 .. vocab_size - 1``."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(index: int) -> str:
    return f"tokens-{index:05d}.bin"


class ShardWriter:
    """Appends tokenized documents to shards in ``out_dir``; ``finish`` returns the shard records.

    ``add(tokens, lengths)`` takes the concatenated tokens of consecutive documents (each already
    ending in eos) and their lengths; documents are written in call order. A new shard starts
    when the next document would push the current one past ``shard_tokens`` (a longer document
    gets a shard of its own).
    """

    def __init__(self, out_dir: Path, dtype: np.dtype, shard_tokens: int = DEFAULT_SHARD_TOKENS):
        if shard_tokens <= 0:
            raise DataError("shard_tokens must be > 0")
        self.out_dir = Path(out_dir)
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.total_tokens = 0
        self.total_docs = 0
        self._index: BinaryIO = open(self.out_dir / INDEX_FILE, "wb")
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self._shard_tokens = 0
        self._shard_docs = 0

    def _open_shard(self) -> None:
        self._close_shard()
        self._file = open(self.out_dir / shard_name(len(self.shards)), "wb")
        self._hash = hashlib.sha256()
        self._shard_tokens = self._shard_docs = 0

    def _close_shard(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self.shards.append(
            {
                "file": shard_name(len(self.shards)),
                "tokens": self._shard_tokens,
                "documents": self._shard_docs,
                "sha256": self._hash.hexdigest(),
            }
        )
        self._file = None

    def _write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        data = np.ascontiguousarray(tokens, dtype=self.dtype).tobytes()
        assert self._file is not None
        self._file.write(data)
        self._hash.update(data)
        ends = self.total_tokens + np.cumsum(lengths, dtype=np.int64)
        self._index.write(ends.astype("<i8").tobytes())
        self._shard_tokens += int(tokens.size)
        self._shard_docs += int(lengths.size)
        self.total_tokens += int(tokens.size)
        self.total_docs += int(lengths.size)

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.size == 0:
            return
        if int(lengths.sum()) != tokens.size or lengths.min() <= 0:
            raise ValueError("lengths must be positive and sum to the number of tokens")
        ends = np.cumsum(lengths)
        doc = 0
        while doc < lengths.size:
            if self._file is None:
                self._open_shard()
            start = int(ends[doc - 1]) if doc else 0
            room = self.shard_tokens - self._shard_tokens
            # documents [doc, stop) fit into the room left in this shard
            stop = int(np.searchsorted(ends, start + room, side="right"))
            if stop == doc:
                if self._shard_tokens:  # current shard has content: start a fresh one
                    self._open_shard()
                    continue
                stop = doc + 1  # a document longer than a shard gets a shard of its own
            end = int(ends[stop - 1])
            self._write(tokens[start:end], lengths[doc:stop])
            doc = stop
            if self._shard_tokens >= self.shard_tokens:
                self._close_shard()

    def finish(self) -> list[dict[str, Any]]:
        self._close_shard()
        self._index.close()
        return self.shards

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._index.close()


def _map(path: Path, dtype: np.dtype) -> np.ndarray:
    """Read-only view of a file as a plain ndarray (cheaper to slice than ``np.memmap``)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return np.empty(0, dtype=dtype)
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(buffer, dtype=dtype)


def dataset_tokenizer_path(dataset_dir: Path) -> Path:
    """Where the tokenizer copy of the dataset at ``dataset_dir`` is, from its manifest (without
    opening the shards); ``tokenizer.model`` when the manifest is missing or names no file."""
    manifest = read_json(dataset_dir / MANIFEST_FILE) or {}
    return dataset_dir / (manifest.get("tokenizer") or {}).get("file", TOKENIZER_COPY)


class PreparedDataset:
    """Read-only access to a prepared dataset directory.

    Attributes: ``path``, ``manifest`` (dict), ``fingerprint``, ``tokenizer_sha256``,
    ``vocab_size``, ``eos_id``, ``dtype``, ``num_tokens``, ``num_documents`` and ``doc_ends``
    (int64[num_documents], see the module docstring).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(
                f"prepared dataset not found: {self.path}; create it with `flm data prepare --out {self.path}`"
            )
        manifest = read_json(self.path / MANIFEST_FILE)
        if manifest is None or manifest.get("format") != DATASET_FORMAT:
            raise DataError(
                f"{self.path} is not a prepared dataset ({MANIFEST_FILE} missing or unreadable); "
                f"create it with `flm data prepare --out {self.path}`"
            )
        if manifest.get("version") != DATASET_FORMAT_VERSION:
            raise DataError(
                f"{self.path}: dataset format version {manifest.get('version')} is not supported "
                f"(expected {DATASET_FORMAT_VERSION}); prepare it again with `flm data prepare --force`"
            )
        self.manifest = manifest
        self.fingerprint: str = manifest["fingerprint"]
        self.tokenizer_sha256: str = manifest["tokenizer"]["sha256"]
        self.vocab_size: int = manifest["tokenizer"]["vocab_size"]
        self.eos_id: int = manifest["tokenizer"]["eos_id"]
        self.dtype = np.dtype(manifest["dtype"])
        self.num_tokens: int = manifest["tokens"]
        self.num_documents: int = manifest["documents"]
        self._shards = []
        starts = []
        offset = 0
        for record in manifest["shards"]:
            file = self.path / record["file"]
            expected = record["tokens"] * self.dtype.itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise DataError(
                    f"{file}: shard missing or of the wrong size (expected {expected} bytes); the dataset is "
                    "damaged, prepare it again with `flm data prepare --force`"
                )
            self._shards.append(_map(file, self.dtype))
            starts.append(offset)
            offset += record["tokens"]
        if offset != self.num_tokens:
            raise DataError(f"{self.path}: shard sizes add up to {offset} tokens, manifest says {self.num_tokens}")
        self._starts = np.asarray(starts + [offset], dtype=np.int64)
        index = self.path / INDEX_FILE
        if not index.is_file() or index.stat().st_size != 8 * self.num_documents:
            raise DataError(f"{index}: index missing or of the wrong size; prepare the dataset again with --force")
        self.doc_ends = _map(index, np.dtype("<i8"))

    def __getstate__(self) -> dict[str, Any]:
        # pickling (e.g. into DataLoader workers) reopens the files instead of copying the mapped tokens
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def tokenizer_path(self) -> Path:
        """The tokenizer copy inside the dataset, as the manifest's ``tokenizer.file`` names it
        (``tokenizer.model`` when it names none)."""
        return self.path / self.manifest["tokenizer"].get("file", TOKENIZER_COPY)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream in the storage dtype (a view when in one shard)."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.num_tokens})")
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        base = int(self._starts[shard])
        if stop <= int(self._starts[shard + 1]):
            return self._shards[shard][start - base : stop - base]
        pieces = []
        while start < stop:
            base, end = int(self._starts[shard]), int(self._starts[shard + 1])
            take = min(stop, end)
            pieces.append(self._shards[shard][start - base : take - base])
            start = take
            shard += 1
        return np.concatenate(pieces)

    def document(self, index: int) -> np.ndarray:
        """Tokens of document ``index`` including its trailing eos."""
        start = int(self.doc_ends[index - 1]) if index else 0
        return self.tokens(start, int(self.doc_ends[index]))
