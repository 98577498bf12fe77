"""The project's own tokenizer: training and loading sentencepiece models.

:class:`Tokenizer` implements :class:`training.data.tokenizer_base.BaseTokenizer` for sentencepiece
models; :func:`training.data.tokenizer.load_tokenizer` loads it (or a Hugging Face tokenizer) from
a path, :func:`train_tokenizer` trains one.

A tokenizer directory holds ``tokenizer.model`` (the sentencepiece model) and ``tokenizer.json``
(its SHA-256, vocabulary size, special ids and how it was trained). The SHA-256 of the model file
is *the* identity of a tokenizer: prepared datasets record it, and ``build_sources`` refuses to mix
data tokenized by different tokenizers.

Fixed choices, the same for every tokenizer of the project:

* special ids ``unk=0, bos=1, eos=2, pad=3``; documents are separated by ``eos`` in the packed
  data (no ``bos`` is added); ``pad`` exists for downstream tools, packing never pads;
* byte fallback: a character that has no piece is encoded as its UTF-8 bytes (``<0xNN>``, 256
  pieces), so no text is ever mapped to ``unk``;
* identity normalisation, extra whitespace kept, whitespace-only pieces allowed, digits split:
  ``decode(encode(text)) == text`` for any text without the sentencepiece meta symbol U+2581,
  which keeps code indentation and makes the shard round trip exact.

So the smallest usable vocabulary is 4 + 256 = 260 ids plus the corpus's frequent characters.
``vocab_size`` here is the *real* vocabulary (``Tokenizer.vocab_size``); the model pads its
embedding rows to a multiple that tensor parallelism needs, and those padded ids never occur in
the data (see docs/data.md).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.data.fsutil import output_lock, read_json, sha256_json, staging_dir, write_json
from training.data.ingest import CorpusSpec, corpus_fingerprint, describe_source, iter_documents, resolve_files
from training.data.tokenizer_base import BaseTokenizer
from training.errors import DataError

MODEL_FILE = "tokenizer.model"
META_FILE = "tokenizer.json"
SPECIAL_IDS = {"unk": 0, "bos": 1, "eos": 2, "pad": 3}
BYTE_PIECES = 256
MIN_VOCAB_SIZE = len(SPECIAL_IDS) + BYTE_PIECES
#: sentences handed to the trainer are cut at line boundaries to at most this many characters
MAX_SENTENCE_CHARS = 4096
TOKENIZER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TokenizerSpec:
    """How to train a tokenizer (everything that changes the resulting model)."""

    vocab_size: int
    model_type: Literal["bpe", "unigram"] = "bpe"
    #: train on a seeded sample of about this many characters of the corpus (all of it if smaller)
    sample_chars: int = 100_000_000
    seed: int = 0
    #: share of the corpus's characters that get their own piece; the rest use byte fallback
    character_coverage: float = 0.9999

    def check(self) -> None:
        if self.vocab_size < MIN_VOCAB_SIZE + 1:
            raise DataError(
                f"vocab_size {self.vocab_size} is too small: the special tokens ({', '.join(SPECIAL_IDS)} = "
                f"{len(SPECIAL_IDS)} ids) and the {BYTE_PIECES} byte-fallback pieces alone need "
                f"{MIN_VOCAB_SIZE} ids; use vocab_size >= {MIN_VOCAB_SIZE + 1} (a few hundred more leave "
                "room for the corpus's characters and merges)"
            )
        if self.vocab_size >= 2**31:
            raise DataError(f"vocab_size {self.vocab_size} is too large (limit 2**31 - 1)")
        if self.model_type not in ("bpe", "unigram"):
            raise DataError(f"unknown tokenizer model_type {self.model_type!r}; allowed: bpe, unigram")
        if self.sample_chars <= 0:
            raise DataError("sample_chars must be > 0")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise DataError("character_coverage must be in [0.9, 1.0]")


class Tokenizer(BaseTokenizer):
    """A loaded sentencepiece model plus its identity (``sha256``) and special ids."""

    kind = "sentencepiece"

    def __init__(self, model_bytes: bytes, path: Path | None = None):

        import sentencepiece as spm  # startup time (flm imports this module for its parser)

        self.path = path
        self.model_bytes = model_bytes
        self.sha256 = hashlib.sha256(model_bytes).hexdigest()
        where = path or "<bytes>"
        try:
            self.processor = spm.SentencePieceProcessor(model_proto=model_bytes)
        except Exception as err:  # sentencepiece raises RuntimeError/OSError variants
            raise DataError(
                f"{where}: not a sentencepiece model ({err}); train one with `flm data tokenizer`"
            ) from None
        self.vocab_size = int(self.processor.get_piece_size())
        self.unk_id = int(self.processor.unk_id())
        self.bos_id = int(self.processor.bos_id())
        self.eos_id = int(self.processor.eos_id())
        self.pad_id = int(self.processor.pad_id())
        if self.eos_id < 0:
            raise DataError(
                f"{where}: the tokenizer has no eos id; documents are separated by eos, "
                "retrain it with `flm data tokenizer`"
            )

    def __getstate__(self) -> dict[str, Any]:
        return {"model_bytes": self.model_bytes, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_bytes"], state["path"])  # type: ignore[misc]

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts, num_threads=1)

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        # sentencepiece never renders control pieces (bos/eos/pad); unk decodes as " ⁇ "
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            special = {i for i in (self.unk_id, self.bos_id, self.eos_id, self.pad_id) if i >= 0}
            ids = [i for i in ids if i not in special]
        return self.processor.decode(ids)

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MODEL_FILE).write_bytes(self.model_bytes)


def model_path(path: str | Path) -> Path:
    """``path`` itself if it is a file, else ``path/tokenizer.model``."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def load_sentencepiece_tokenizer(path: str | Path) -> Tokenizer:
    """The project tokenizer at ``path`` (a tokenizer directory or its ``.model`` file); DataError if
    it is missing or not a sentencepiece model."""
    file = model_path(path)
    if not file.is_file():
        raise DataError(
            f"tokenizer not found: {file}; train one with `flm data tokenizer --out {Path(path)}`, "
            "or give a Hugging Face tokenizer (a directory with tokenizer.json)"
        )
    return Tokenizer(file.read_bytes(), file)


def _sentences(text: str) -> Iterator[str]:
    """Cut ``text`` at line ends into pieces of at most MAX_SENTENCE_CHARS characters."""
    if len(text) <= MAX_SENTENCE_CHARS:
        yield text
        return
    current: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > MAX_SENTENCE_CHARS:
            if current:
                yield "".join(current)
                current, size = [], 0
            yield line[:MAX_SENTENCE_CHARS]
            line = line[MAX_SENTENCE_CHARS:]
        if size + len(line) > MAX_SENTENCE_CHARS and current:
            yield "".join(current)
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        yield "".join(current)


def sample_sentences(corpus: CorpusSpec, files, spec: TokenizerSpec) -> tuple[list[str], int, int]:
    """Seeded sample of the corpus as trainer sentences: (sentences, documents used, characters).

    Each document is kept with probability ``min(1, 1.2 x sample_chars / corpus bytes)`` from a
    generator seeded by ``spec.seed`` (the 1.2 makes up for markup bytes such as JSON syntax, so
    the sample nearly reaches its size at the end of the corpus); reading stops once
    ``sample_chars`` are in. A hub dataset has no known size: its first documents are used.
    """
    total_bytes = sum(f.size for f in files)
    keep = 1.0 if not total_bytes else min(1.0, 1.2 * spec.sample_chars / total_bytes)
    rng = np.random.default_rng(spec.seed)
    sentences: list[str] = []
    docs = chars = 0
    for batch in iter_documents(corpus, files):
        draws = rng.random(len(batch.texts)) if keep < 1.0 else None
        for i, text in enumerate(batch.texts):
            if draws is not None and draws[i] >= keep:
                continue
            sentences.extend(_sentences(text))
            docs += 1
            chars += len(text)
            if chars >= spec.sample_chars:
                return sentences, docs, chars
    return sentences, docs, chars


def _train_bytes(sentences: list[str], spec: TokenizerSpec, source: str, num_threads: int) -> bytes:
    import sentencepiece as spm  # startup time (flm imports this module for its parser)

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=spec.model_type,
            vocab_size=spec.vocab_size,
            character_coverage=spec.character_coverage,
            byte_fallback=True,
            unk_id=SPECIAL_IDS["unk"],
            bos_id=SPECIAL_IDS["bos"],
            eos_id=SPECIAL_IDS["eos"],
            pad_id=SPECIAL_IDS["pad"],
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            # the sample is already drawn (seeded, above); sentencepiece must use all of it
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=4 * MAX_SENTENCE_CHARS + 16,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as err:
        raise _training_error(str(err), spec, source) from None
    return _canonical(model.getvalue())


def _canonical(model_bytes: bytes) -> bytes:
    """The model with the trainer's thread count cleared from its recorded trainer spec.

    sentencepiece stores ``num_threads`` in the model, so identical vocabularies trained with
    different thread counts would get different SHA-256s; the count does not affect encoding.
    """
    from sentencepiece import sentencepiece_model_pb2  # startup time (flm imports this module for its parser)

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    proto.trainer_spec.ClearField("num_threads")
    return proto.SerializeToString()


def _training_error(text: str, spec: TokenizerSpec, source: str) -> DataError:
    small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", text)
    if small:
        need = int(small.group(2))
        return DataError(
            f"vocab_size {spec.vocab_size} is too small for {source}: the special tokens, byte pieces and the "
            f"characters covering {spec.character_coverage} of the sample need {need} ids; use vocab_size >= "
            f"{need} (more leaves room for merges) or a lower character_coverage"
        )
    high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", text)
    if high:
        return DataError(
            f"vocab_size {spec.vocab_size} is too large for the sample of {source}: sentencepiece can build "
            f"at most {high.group(2)} pieces from it; give more text (or a larger sample_chars) or use "
            f"vocab_size <= {high.group(2)}"
        )
    return DataError(f"sentencepiece could not train on {source}: {text}")


@dataclass
class TrainResult:
    tokenizer: Tokenizer
    #: False when an identical tokenizer was already there (nothing was done)
    trained: bool
    meta: dict[str, Any]


def train_tokenizer(
    corpus: CorpusSpec, out_dir: str | Path, spec: TokenizerSpec, *, force: bool = False, num_threads: int | None = None
) -> TrainResult:
    """Train a tokenizer on a sample of ``corpus`` into ``out_dir`` (idempotent, atomic).

    If ``out_dir`` already holds a tokenizer trained from the same corpus fingerprint and spec it
    is returned untouched. If it holds a different one, DataError unless ``force``.
    """
    import sentencepiece as spm  # startup time (flm imports this module for its parser)

    spec.check()
    out_dir = Path(out_dir)
    files = resolve_files(corpus)
    fingerprint = corpus_fingerprint(corpus, files)
    training_id = sha256_json({"corpus": fingerprint, "spec": asdict(spec), "version": TOKENIZER_FORMAT_VERSION})
    with output_lock(out_dir):
        existing = read_json(out_dir / META_FILE)
        if existing is not None and (out_dir / MODEL_FILE).is_file():
            tokenizer = load_sentencepiece_tokenizer(out_dir)
            if existing.get("training_id") == training_id and existing.get("sha256") == tokenizer.sha256:
                return TrainResult(tokenizer, False, existing)
            if not force:
                raise DataError(
                    f"{out_dir} already holds a different tokenizer (trained from other data or settings); "
                    "choose a new --out directory or pass --force to replace it"
                )
        elif out_dir.exists() and any(out_dir.iterdir()) and not force:
            raise DataError(f"{out_dir} exists and is not a tokenizer directory; choose an empty or new --out")

        source = describe_source(corpus, files)
        sentences, docs, chars = sample_sentences(corpus, files, spec)
        if not sentences:
            raise DataError(
                f"{source}: the corpus is empty (no non-empty documents); check the inputs and --text-field"
            )
        threads = num_threads or max(1, min(8, os.cpu_count() or 1))
        model_bytes = _train_bytes(sentences, spec, source, threads)
        tokenizer = Tokenizer(model_bytes)
        meta = {
            "format": "flm-tokenizer",
            "version": TOKENIZER_FORMAT_VERSION,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            "model_type": spec.model_type,
            "special_ids": dict(SPECIAL_IDS),
            "byte_fallback": True,
            "normalization": "identity",
            "training_id": training_id,
            "training": {
                "corpus": corpus.to_json(),
                "corpus_fingerprint": fingerprint,
                "spec": asdict(spec),
                "sampled_documents": docs,
                "sampled_chars": chars,
                "threads": threads,
                "sentencepiece": spm.__version__,
            },
        }
        with staging_dir(out_dir) as tmp:
            (tmp / MODEL_FILE).write_bytes(model_bytes)
            write_json(tmp / META_FILE, meta)
    return TrainResult(load_sentencepiece_tokenizer(out_dir), True, meta)
