"""The tokenizer interface (:class:`BaseTokenizer`), apart from its two implementations.

``sentencepiece_tokenizer`` (the project's own models) and ``hf_tokenizer`` (Hugging Face
tokenizers) implement it; ``tokenizer`` (:func:`training.data.tokenizer.load_tokenizer`) picks the
implementation that reads a path. Imports go one way: implementations -> this module, loader ->
implementations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


class BaseTokenizer(ABC):
    """The tokenizer interface every part of the project uses (data pipeline, import/export, IQ).

    Two implementations: :class:`training.data.sentencepiece_tokenizer.Tokenizer` (the project's
    sentencepiece models, ``kind = "sentencepiece"``) and
    :class:`training.data.hf_tokenizer.HFTokenizer` (a Hugging Face ``tokenizer.json``, ``kind =
    "hf"``). Contract:

    * ``encode(text)`` / ``encode_batch(texts)``: ids with *no* special tokens added (the project
      trains without BOS; documents are separated by ``eos`` in the packed data);
    * ``decode(ids, skip_special_tokens=False)``;
    * ``unk_id``/``bos_id``/``eos_id``/``pad_id`` (-1 where the tokenizer has none; ``eos`` always
      exists), ``special_ids()`` (the same as a dict), ``vocab_size`` (ids ``0 .. vocab_size - 1``);
    * ``sha256`` (= ``fingerprint``): the identity of the tokenizer, the SHA-256 of the file that
      defines it (``tokenizer.model`` / ``tokenizer.json``); prepared datasets record it;
    * ``save(out_dir)``: writes files that :func:`training.data.tokenizer.load_tokenizer` reads back
      to the same fingerprint;
    * ``record()``: a JSON-ready description (kind, fingerprint, vocabulary, special ids, source).

    Instances pickle cheaply (the defining bytes, not a loaded processor), so they can be handed to
    worker processes.
    """

    kind: str = ""
    path: Path | None = None
    sha256: str = ""
    vocab_size: int = 0
    unk_id: int = -1
    bos_id: int = -1
    eos_id: int = -1
    pad_id: int = -1

    @property
    def fingerprint(self) -> str:
        return self.sha256

    def special_ids(self) -> dict[str, int | None]:
        return {
            name: (i if i >= 0 else None)
            for name, i in (("unk", self.unk_id), ("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id))
        }

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str: ...

    @abstractmethod
    def save(self, out_dir: Path) -> None: ...

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "special_ids": self.special_ids(),
            "source": str(self.path) if self.path else None,
        }
