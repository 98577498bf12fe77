"""Hugging Face tokenizers behind the project's tokenizer interface (:class:`training.data.tokenizer_base.BaseTokenizer`).

:class:`HFTokenizer` wraps a ``tokenizers.Tokenizer`` (the Rust pipeline transformers' fast
tokenizers use), so the data pipeline tokenizes exactly as ``AutoTokenizer`` does, without loading
transformers in the worker processes:

* ``encode``/``encode_batch``: ``add_special_tokens=False`` -- the tokenizer's post-processor
  (e.g. a BOS that Llama-3's adds) is *not* applied, because the project trains on documents
  separated by ``eos`` only; ``decode`` is the pipeline's decoder (transformers'
  ``clean_up_tokenization_spaces`` is not applied);
* identity: the SHA-256 of the ``tokenizer.json`` bytes (what the directory holds; a copy keeps it);
* special ids: named by ``tokenizer_config.json`` / ``special_tokens_map.json`` (``eos_token`` ...),
  else by the directory's ``config.json`` (``eos_token_id`` ...), else the conventional names
  (``</s>``, ``<|endoftext|>``, ``<|end_of_text|>``, ``<eos>``) for ``eos``; a tokenizer without an
  ``eos`` is refused (documents are separated by it);
* ``save(out_dir)`` writes the tokenizer files it was loaded from *unchanged* (``tokenizer.json``,
  ``tokenizer_config.json``, ``special_tokens_map.json``, chat templates ...), so
  ``AutoTokenizer.from_pretrained(out_dir)`` is the original tokenizer.

Loading (:func:`load_hf_tokenizer`): a ``tokenizer.json`` file, a directory with one, or a directory
that only ``transformers.AutoTokenizer`` can read (e.g. GPT-2's ``vocab.json`` + ``merges.txt``);
for the latter the fast tokenizer transformers builds is serialized to ``tokenizer.json`` (and
saved with the original files). Slow-only tokenizers that transformers cannot convert are refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from training.data.tokenizer_base import BaseTokenizer
from training.errors import DataError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
#: files of a Hugging Face tokenizer directory that are kept (copied unchanged) with the tokenizer
TOKENIZER_FILES = (
    TOKENIZER_JSON,
    TOKENIZER_CONFIG,
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
#: conventional end-of-text tokens, used when no file names the eos token
EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")
_NAMES = ("unk", "bos", "eos", "pad")


def is_tokenizer_json(path: Path) -> bool:
    """Whether ``path`` is a ``tokenizers`` serialization (not the project's tokenizer record)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model" in data and "format" not in data


def _token_name(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _named_specials(files: dict[str, bytes]) -> dict[str, str]:
    """``{"eos": "</s>", ...}`` from tokenizer_config.json / special_tokens_map.json.

    Read here rather than through ``AutoTokenizer``: these ``*_token`` fields are what it reads
    too, and the data pipeline then needs neither transformers nor its start-up time."""
    out: dict[str, str] = {}
    for name in ("special_tokens_map.json", TOKENIZER_CONFIG):
        if name in files:
            try:
                data = json.loads(files[name])
            except ValueError:
                raise DataError(f"{name} of the tokenizer is not valid JSON; fix or remove it") from None
            for key in _NAMES:
                token = _token_name(data.get(f"{key}_token"))
                if token is not None:
                    out[key] = token
    return out


def _config_ids(directory: Optional[Path]) -> dict[str, int]:
    """Special ids of a model directory's config.json / generation_config.json (first of a list)."""
    out: dict[str, int] = {}
    if directory is None:
        return out
    for name in ("generation_config.json", "config.json"):
        try:
            data = json.loads((directory / name).read_text())
        except (OSError, ValueError):
            continue
        for key in _NAMES:
            value = data.get(f"{key}_token_id")
            if isinstance(value, list):
                value = value[0] if value else None
            if isinstance(value, int):
                out[key] = value
    return out


class HFTokenizer(BaseTokenizer):
    """A Hugging Face tokenizer (see the module docstring)."""

    kind = "hf"

    def __init__(
        self, files: dict[str, bytes], path: Optional[Path] = None, config_ids: Optional[dict[str, int]] = None
    ):
        from tokenizers import Tokenizer as Backend  # optional heavy dependency: only Hugging Face tokenizers need it

        if TOKENIZER_JSON not in files:
            raise DataError(f"{path}: a Hugging Face tokenizer needs {TOKENIZER_JSON}")
        self.files = dict(files)
        self.path = path
        self._config_ids = dict(config_ids or {})
        where = path or "<tokenizer.json>"
        try:
            self.backend = Backend.from_str(files[TOKENIZER_JSON].decode("utf-8"))
        except Exception as err:  # tokenizers raises plain Exception for malformed files
            raise DataError(f"{where}: not a valid tokenizer.json ({err})") from None
        self.sha256 = hashlib.sha256(files[TOKENIZER_JSON]).hexdigest()
        vocab = self.backend.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0
        named = _named_specials(self.files)
        ids: dict[str, int] = {}
        for key in _NAMES:
            if key in named:
                i = self.backend.token_to_id(named[key])
                if i is None:
                    raise DataError(
                        f"{where}: the {key}_token {named[key]!r} named in its tokenizer files is not in "
                        "the vocabulary; fix tokenizer_config.json"
                    )
                ids[key] = i
            elif key in self._config_ids and 0 <= self._config_ids[key] < self.vocab_size:
                ids[key] = self._config_ids[key]
        if "eos" not in ids:
            found = next((vocab[n] for n in EOS_NAMES if n in vocab), None)
            if found is None:
                raise DataError(
                    f"{where}: the tokenizer names no end-of-text token (documents are separated by eos); set "
                    f'"eos_token" in {TOKENIZER_CONFIG} next to tokenizer.json'
                )
            ids["eos"] = found
        self.unk_id, self.bos_id, self.eos_id, self.pad_id = (ids.get(k, -1) for k in _NAMES)

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files, "path": self.path, "config_ids": self._config_ids}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["files"], state["path"], state["config_ids"])  # type: ignore[misc]

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (out_dir / name).write_bytes(data)

    def record(self) -> dict[str, Any]:
        return dict(super().record(), files=sorted(self.files))


def load_hf_tokenizer(path: str | Path) -> HFTokenizer:
    """A Hugging Face tokenizer from a ``tokenizer.json`` file or a directory (module docstring)."""
    path = Path(path).expanduser()
    if path.is_file():
        if not is_tokenizer_json(path):
            raise DataError(f'{path} is not a Hugging Face tokenizer.json (no "model" section)')
        files = {TOKENIZER_JSON: path.read_bytes()}
        sibling = path.parent / TOKENIZER_CONFIG
        if path.name == TOKENIZER_JSON and sibling.is_file():
            files[TOKENIZER_CONFIG] = sibling.read_bytes()
        return HFTokenizer(files, path)
    if not path.is_dir():
        raise DataError(f"tokenizer not found: {path}")
    files = {name: (path / name).read_bytes() for name in TOKENIZER_FILES if (path / name).is_file()}
    if TOKENIZER_JSON in files and is_tokenizer_json(path / TOKENIZER_JSON):
        return HFTokenizer(files, path / TOKENIZER_JSON, _config_ids(path))
    files[TOKENIZER_JSON] = _converted_by_transformers(path)
    return HFTokenizer(files, path, _config_ids(path))


def _converted_by_transformers(path: Path) -> bytes:
    """``tokenizer.json`` of the fast tokenizer ``AutoTokenizer`` builds from ``path`` (local only)."""
    import transformers  # optional heavy dependency: only Hugging Face tokenizers need it

    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # transformers raises many types for unreadable tokenizer files
        raise DataError(
            f"{path}: transformers cannot load a tokenizer from it ({err}); give a directory with "
            "tokenizer.json or a sentencepiece tokenizer.model"
        ) from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise DataError(
            f"{path}: transformers loads only a slow (Python) tokenizer ({type(tok).__name__}); "
            "convert it once with AutoTokenizer.from_pretrained(dir, use_fast=True).save_pretrained(dir)"
        )
    return backend.to_str().encode("utf-8")
