"""Loading any tokenizer from a path: :func:`load_tokenizer` picks the implementation of
:class:`training.data.tokenizer_base.BaseTokenizer` that reads it (:func:`is_hf_tokenizer` decides):
the project's sentencepiece tokenizer (``training.data.sentencepiece_tokenizer``) or a Hugging Face
one (``training.data.hf_tokenizer``)."""

from __future__ import annotations

from pathlib import Path

from training.data.hf_tokenizer import is_tokenizer_json, load_hf_tokenizer
from training.data.sentencepiece_tokenizer import META_FILE, MODEL_FILE, load_sentencepiece_tokenizer
from training.data.tokenizer_base import BaseTokenizer

__all__ = ["is_hf_tokenizer", "load_tokenizer"]


def is_hf_tokenizer(path: str | Path) -> bool:
    """Whether ``path`` is a Hugging Face tokenizer: a ``.json`` tokenizer file, or a directory whose
    ``tokenizer.json`` is one (not the project's record next to a ``tokenizer.model``) or that has
    no ``tokenizer.model`` but a ``tokenizer_config.json`` (``AutoTokenizer`` loads it)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".json"
    if not path.is_dir():
        return False
    if (path / META_FILE).is_file() and is_tokenizer_json(path / META_FILE):
        return True
    return not (path / MODEL_FILE).is_file() and (path / "tokenizer_config.json").is_file()


def load_tokenizer(path: str | Path) -> BaseTokenizer:
    """Load a tokenizer: a project tokenizer directory or ``.model`` file (sentencepiece), or a
    Hugging Face tokenizer (a directory with ``tokenizer.json`` or one ``AutoTokenizer`` loads, or a
    ``tokenizer.json`` file; see :func:`is_hf_tokenizer`). DataError if it is missing or invalid."""
    if is_hf_tokenizer(path):
        return load_hf_tokenizer(path)
    return load_sentencepiece_tokenizer(path)
