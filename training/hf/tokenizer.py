"""Tokenizers on the Hugging Face side, and back (sentencepiece converted, Hugging Face kept as is).

:func:`to_hf_tokenizer` builds a ``tokenizers`` pipeline that follows the sentencepiece model's own
settings, so that ``AutoTokenizer`` encodes every text to the ids ``SentencePieceProcessor.encode``
gives (no BOS/EOS added, which is how the project trains: documents are separated by ``eos``):

- normalizer: the model's precompiled character map (none for the project's ``identity``
  normalisation), extra-whitespace removal if the model does it, spaces escaped as ``▁``, the
  dummy prefix ``▁`` prepended (sentencepiece's ``add_dummy_prefix``);
- model: BPE with merges ranked by the merged piece's score (sentencepiece merges the best-scoring
  pair), or Unigram with the pieces' scores; byte fallback as in the model;
- special tokens: ``unk``/``bos``/``eos``/``pad`` pieces with ``split_special_tokens`` on, so a text
  that contains ``</s>`` is encoded as characters, as sentencepiece does;
- decoder: ``▁`` -> space, byte fallback, dummy prefix stripped.

:func:`encoding_mismatches` compares the two on texts; export refuses a tokenizer whose converted
form disagrees on :data:`SAMPLE_TEXTS`. Known differences: decoding ids that form *invalid* UTF-8
(a stray byte piece) puts U+FFFD differently; for unigram models, :data:`UNIGRAM_LIMITATION`.

A Hugging Face tokenizer (:class:`training.data.hf_tokenizer.HFTokenizer`) needs no conversion:
:func:`save_hf_tokenizer` writes its original files back unchanged and checks transformers encodes
:data:`SAMPLE_TEXTS` as the ``tokenizers`` pipeline does.

:func:`checkpoint_tokenizer` finds a checkpoint's tokenizer; :func:`import_tokenizer` keeps the
tokenizer of a Hugging Face model directory (:func:`import_sentencepiece` for a sentencepiece
``tokenizer.model``, else the Hugging Face tokenizer files unchanged).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import transformers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, models, normalizers
from tokenizers import Tokenizer as TkTokenizer

from training.checkpoint import read_meta
from training.config.data import DataConfig
from training.config_base import from_dict
from training.data.build import default_data_dir
from training.data.hf_tokenizer import TOKENIZER_CONFIG, TOKENIZER_JSON, load_hf_tokenizer
from training.data.sentencepiece_tokenizer import META_FILE, MODEL_FILE, Tokenizer
from training.data.shards import dataset_tokenizer_path
from training.data.tokenizer import load_tokenizer
from training.data.tokenizer_base import BaseTokenizer
from training.errors import DataError
from training.hf.errors import HFInteropError

#: texts every exported tokenizer must encode exactly like sentencepiece (digits, whitespace runs,
#: tabs/newlines, non-ASCII, emoji via byte fallback, special-token look-alikes, empty text)
SAMPLE_TEXTS = (
    "The key of the red box is 4821. Count from 12 to 345 in steps of 7.",
    "def f(x):\n\tif x  >  0:\n        return x ** 2   # trailing  \n",
    " leading space, double  space and a trailing one ",
    "Unicode: é ß 中文 → 😀 ∑ ÿ",
    "special look-alikes: <s> </s> <pad> <unk> <0x41>",
    "",
    "\n\n",
)

_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

#: the one known difference: transformers' Unigram matches every vocabulary string in the text,
#: sentencepiece never matches control and byte pieces, so a literal ``<s>`` or ``<0x41>`` in the
#: text encodes differently (BPE, the project's default, has no such difference)
UNIGRAM_LIMITATION = (
    "unigram tokenizer: text that literally contains a control or byte piece "
    "(e.g. '<s>', '</s>', '<0x41>') encodes differently in transformers; all other text "
    "encodes identically"
)


def _lookalike(text: str) -> bool:

    return bool(re.search(r"<(s|/s|pad|unk|0x[0-9A-F]{2})>", text))


def _proto(model_bytes: bytes):

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def _backend(proto):
    """The ``tokenizers.Tokenizer`` that encodes like the sentencepiece model ``proto``."""

    pieces = list(proto.pieces)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.treat_whitespace_as_suffix:
        raise HFInteropError(
            "the sentencepiece model sets treat_whitespace_as_suffix, which the "
            "Hugging Face conversion does not reproduce; export refused"
        )
    if spec.model_type == 2:  # BPE: the best-scoring merged piece first (ties: lower id)
        normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == _NORMAL}
        ranked = []
        for token, (score, i) in normal.items():
            for cut in range(1, len(token)):
                left, right = token[:cut], token[cut:]
                if left in normal and right in normal:
                    ranked.append((-score, i, left, right))
        model = models.BPE(
            vocab={p.piece: i for i, p in enumerate(pieces)},
            merges=[(a, b) for _, _, a, b in sorted(ranked)],
            unk_token=pieces[spec.unk_id].piece,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
        )
    elif spec.model_type == 1:  # Unigram (see UNIGRAM_LIMITATION)
        vocab = [(p.piece, p.score) for p in pieces]
        model = models.Unigram(vocab, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
    else:
        raise HFInteropError(f"sentencepiece model type {spec.model_type} is not supported (BPE and unigram are)")
    tok = TkTokenizer(model)
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("▁", " ")]
    if spec.byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)
    tok.add_tokens([AddedToken(p.piece, special=False, normalized=False) for p in pieces if p.type == _USER])
    tok.add_special_tokens(
        [AddedToken(p.piece, special=True, normalized=False) for p in pieces if p.type in (_UNKNOWN, _CONTROL)]
    )
    return tok


def special_pieces(tokenizer: Tokenizer) -> dict[str, Optional[str]]:
    """``{unk,bos,eos,pad}_token`` -> piece (None where the model has no such id)."""
    sp = tokenizer.processor
    ids = {
        "unk_token": tokenizer.unk_id,
        "bos_token": tokenizer.bos_id,
        "eos_token": tokenizer.eos_id,
        "pad_token": tokenizer.pad_id,
    }
    return {name: (sp.id_to_piece(i) if i is not None and i >= 0 else None) for name, i in ids.items()}


def to_hf_tokenizer(tokenizer: Tokenizer, model_max_length: int):
    """A ``transformers`` fast tokenizer equivalent to ``tokenizer`` (see the module docstring)."""

    specials = {k: v for k, v in special_pieces(tokenizer).items() if v is not None}
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=_backend(_proto(tokenizer.model_bytes)),
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
        model_max_length=model_max_length,
        **specials,
    )


def encoding_mismatches(tokenizer: Tokenizer, hf_tokenizer, texts=SAMPLE_TEXTS) -> list[dict[str, Any]]:
    """Texts on which ``hf_tokenizer`` (default call, special tokens as configured) and the project's
    ``tokenizer`` give different ids; each entry has the text and both id lists."""
    out = []
    for text in texts:
        ours, theirs = tokenizer.encode(text), list(hf_tokenizer(text)["input_ids"])
        if ours != theirs:
            out.append({"text": text, "sentencepiece": ours, "hf": theirs})
    return out


def save_hf_tokenizer(tokenizer: BaseTokenizer, out_dir: Path, model_max_length: int) -> dict[str, Any]:
    """Write ``tokenizer`` in Hugging Face form into ``out_dir`` and check the written files encode
    :data:`SAMPLE_TEXTS` like ``tokenizer`` (HFInteropError otherwise). Returns a JSON-ready record.

    A sentencepiece tokenizer is converted (``tokenizer.json``, ``tokenizer_config.json`` with
    ``model_max_length``) and its ``tokenizer.model`` copied; a Hugging Face tokenizer is written
    back unchanged (its own files, byte for byte), checked with ``add_special_tokens=False`` (how the
    project encodes)."""
    if tokenizer.kind == "hf":
        return _save_hf_files(tokenizer, out_dir)

    to_hf_tokenizer(tokenizer, model_max_length).save_pretrained(str(out_dir))
    (out_dir / MODEL_FILE).write_bytes(tokenizer.model_bytes)
    loaded = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    unigram = _proto(tokenizer.model_bytes).trainer_spec.model_type == 1
    texts = [t for t in SAMPLE_TEXTS if not (unigram and _lookalike(t))]
    bad = encoding_mismatches(tokenizer, loaded, texts)
    if bad:
        first = next(
            i for i, (a, b) in enumerate(zip(bad[0]["hf"] + [None], bad[0]["sentencepiece"] + [None])) if a != b
        )
        raise HFInteropError(
            f"the converted tokenizer of {tokenizer.path} encodes {bad[0]['text']!r} differently from sentencepiece "
            f"from token {first} on (transformers {bad[0]['hf'][first : first + 6]}, sentencepiece "
            f"{bad[0]['sentencepiece'][first : first + 6]}); this sentencepiece model uses settings the conversion does "
            "not reproduce, so the export is refused"
        )
    return {
        "kind": tokenizer.kind,
        "sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size,
        "source": str(tokenizer.path),
        "special_tokens": special_pieces(tokenizer),
        "checked_texts": len(texts),
        "limitation": UNIGRAM_LIMITATION if unigram else None,
    }


def _save_hf_files(tokenizer: BaseTokenizer, out_dir: Path) -> dict[str, Any]:

    tokenizer.save(out_dir)
    try:
        loaded = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    except Exception as err:  # transformers raises many types for unreadable tokenizer files
        raise HFInteropError(
            f"transformers cannot load the tokenizer files of {tokenizer.path} ({err}); "
            "fix them or export with --no-tokenizer"
        ) from None
    for text in SAMPLE_TEXTS:
        ours, theirs = tokenizer.encode(text), loaded.encode(text, add_special_tokens=False)
        if ours != theirs:
            raise HFInteropError(
                f"the tokenizer files of {tokenizer.path} encode {text!r} differently in transformers ({theirs[:8]}) "
                f"and in the tokenizers library ({ours[:8]}); the export is refused"
            )
    return {
        "kind": tokenizer.kind,
        "sha256": tokenizer.sha256,
        "vocab_size": tokenizer.vocab_size,
        "source": str(tokenizer.path),
        "files": sorted(tokenizer.files),  # type: ignore[attr-defined]
        "special_ids": tokenizer.special_ids(),
        "checked_texts": len(SAMPLE_TEXTS),
        "limitation": None,
    }


# ------------------------------------------------------------------ which tokenizer a checkpoint has
def _load(path: Path, what: str) -> BaseTokenizer:

    try:
        return load_tokenizer(path)
    except DataError as err:
        raise HFInteropError(f"{what}: {err}") from None


def _from_meta(ckpt: Path, meta: dict[str, Any], seen: set[Path]) -> Optional[tuple[BaseTokenizer, str]]:

    own = meta.get("tokenizer")
    if own:
        path = (ckpt / own) if not Path(own).is_absolute() else Path(own)
        return _load(path, f"tokenizer recorded in {ckpt}/flm_checkpoint.json"), f"{path} (recorded in the checkpoint)"
    data = (meta.get("config") or {}).get("data") or {}
    kind = data.get("kind", "mock")
    if kind == "prepared":
        if data.get("tokenizer"):
            path = Path(data["tokenizer"]).expanduser()
            return _load(path, f"data.tokenizer of {ckpt}'s run config"), f"{path} (data.tokenizer)"
        first = Path(data["datasets"][0]["path"]).expanduser()
        path = dataset_tokenizer_path(first)
        return _load(path, f"the copy inside the dataset {first} of {ckpt}'s run config"), f"{path} (dataset copy)"
    if kind == "default":
        vocab = meta["config"]["model"]["vocab_size"]
        data_cfg = from_dict(DataConfig, data, "data")
        path = default_data_dir(data_cfg) / f"tokenizer-bpe-v{vocab}"
        return _load(
            path,
            f"the default-corpus tokenizer of {ckpt}'s run (build it with `flm data default-corpus "
            f"--out {path.parent} --vocab-size {vocab} --selection {data_cfg.default_corpus}"
            + (f" --sources {data_cfg.sources_dir}" if data_cfg.default_corpus == "pinned" else "")
            + "`)",
        ), f"{path} (default corpus)"
    source = (meta.get("growth") or {}).get("source")
    if source:
        src = Path(source)
        if src in seen or not src.exists():
            return None
        seen.add(src)
        return _from_meta(src, read_meta(src), seen)
    return None


NO_TOKENIZER_HINT = (
    "pass --tokenizer PATH (a tokenizer directory, .model or tokenizer.json file whose vocabulary "
    "matches model.vocab_size), or --no-tokenizer to export the weights only"
)


def checkpoint_tokenizer(
    ckpt: Path, meta: dict[str, Any], explicit: Optional[str | Path] = None, hint: str = NO_TOKENIZER_HINT
) -> tuple[BaseTokenizer, str]:
    """(tokenizer, where it came from) of checkpoint ``ckpt`` with metadata ``meta``.

    Order: ``explicit`` (``--tokenizer``); the tokenizer recorded by ``flm import-hf``; the run's
    ``data:`` section (``prepared``: ``data.tokenizer`` or the first dataset's copy; ``default``: the
    default-corpus cache); for a grown checkpoint, its source checkpoint's. Relative data paths are
    resolved against the current directory (as training does). HFInteropError when there is none
    (mock data; the message ends with ``hint``) or when its vocabulary is not ``model.vocab_size``
    (a Hugging Face tokenizer may have fewer ids).
    """
    if explicit is not None:
        found = (_load(Path(explicit).expanduser(), "--tokenizer"), f"{explicit} (--tokenizer)")
    else:
        found = _from_meta(ckpt, meta, {ckpt})
    if found is None:
        raise HFInteropError(f"{ckpt} was trained on mock data (data.kind: mock), so it has no tokenizer; {hint}")
    tok, where = found
    vocab = meta["config"]["model"]["vocab_size"]
    # a Hugging Face tokenizer may have fewer ids than the model has rows (released models pad
    # their embeddings); the project's sentencepiece tokenizers are trained to exactly vocab_size
    if tok.vocab_size != vocab and not (tok.kind == "hf" and tok.vocab_size < vocab):
        raise HFInteropError(
            f"the tokenizer {where} has {tok.vocab_size} ids but {ckpt} has model.vocab_size {vocab}; "
            "this is not the tokenizer the model was trained with; pass the right one with --tokenizer PATH"
        )
    return tok, where


# ------------------------------------------------------------------ import: HF dir -> project tokenizer
def import_tokenizer(hf_dir: Path, out_dir: Path, vocab_size: int) -> dict[str, Any]:
    """Keep the tokenizer of the Hugging Face model directory ``hf_dir`` in ``out_dir``.

    A sentencepiece ``tokenizer.model`` (Llama 1/2 style) becomes a project tokenizer directory
    (:func:`import_sentencepiece`); otherwise the directory's Hugging Face tokenizer
    (``tokenizer.json``, or what ``AutoTokenizer`` reads) is copied unchanged
    (:class:`training.data.hf_tokenizer.HFTokenizer`), which ``flm data prepare --tokenizer``,
    ``flm export-hf`` and ``flm iq`` use as it is. HFInteropError when there is neither, when the
    files cannot be read, or when the tokenizer has more ids than the embedding has rows."""

    if (hf_dir / MODEL_FILE).is_file() and _is_sentencepiece(hf_dir / MODEL_FILE):
        return import_sentencepiece(hf_dir, out_dir, vocab_size)
    if not ((hf_dir / TOKENIZER_JSON).is_file() or (hf_dir / TOKENIZER_CONFIG).is_file()):
        raise HFInteropError(
            f"{hf_dir} has no tokenizer (neither {TOKENIZER_JSON}, {TOKENIZER_CONFIG} nor a sentencepiece "
            f"{MODEL_FILE}); copy the model's tokenizer files into it, or pass --no-tokenizer to import the "
            "weights only"
        )
    try:
        tok = load_hf_tokenizer(hf_dir)
    except DataError as err:
        raise HFInteropError(f"{hf_dir}: {err}; or pass --no-tokenizer to import the weights only") from None
    if tok.vocab_size > vocab_size:
        raise HFInteropError(
            f"{hf_dir / TOKENIZER_JSON} has {tok.vocab_size} ids but the model's embedding has only {vocab_size} rows "
            f"(config.json vocab_size); the tokenizer does not belong to these weights"
        )
    tok.save(out_dir)
    return dict(tok.record(), imported_from=str(hf_dir))


def import_sentencepiece(hf_dir: Path, out_dir: Path, vocab_size: int) -> dict[str, Any]:
    """Copy ``hf_dir/tokenizer.model`` into ``out_dir`` as a project tokenizer directory
    (``tokenizer.model`` + ``tokenizer.json`` record). HFInteropError when it is missing, not
    sentencepiece, has more ids than the model's ``vocab_size`` rows, or disagrees with the
    directory's ``tokenizer.json`` (when there is one) on :data:`SAMPLE_TEXTS`."""
    src = hf_dir / MODEL_FILE
    if not src.is_file():
        raise HFInteropError(
            f"{src} not found: the project's tokenizer is sentencepiece, and this directory has none "
            f"(a tokenizer.json alone, e.g. byte-level BPE, cannot be used for training data); pass "
            "--no-tokenizer to import the weights only"
        )
    tok = Tokenizer(src.read_bytes(), src) if _is_sentencepiece(src) else None
    if tok is None:
        raise HFInteropError(f"{src} is not a sentencepiece model; pass --no-tokenizer to import the weights only")
    if tok.vocab_size > vocab_size:
        raise HFInteropError(
            f"{src} has {tok.vocab_size} ids but the model's embedding has only {vocab_size} rows "
            f"(config.json vocab_size); the tokenizer does not belong to these weights"
        )
    if (hf_dir / "tokenizer.json").is_file() or (hf_dir / "tokenizer_config.json").is_file():
        _check_hf_dir_tokenizer(hf_dir, tok)
    out_dir.mkdir(parents=True)
    shutil.copyfile(src, out_dir / MODEL_FILE)
    record = {
        "format": "flm-tokenizer",
        "version": 1,
        "sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "special_ids": {"unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id},
        "imported_from": str(src),
    }
    (out_dir / META_FILE).write_text(json.dumps(record, indent=2))
    return record


def _is_sentencepiece(path: Path) -> bool:
    try:
        return len(_proto(path.read_bytes()).pieces) > 0
    except Exception:  # protobuf DecodeError and friends: not a model file
        return False


def _check_hf_dir_tokenizer(hf_dir: Path, tok: Tokenizer) -> None:

    try:
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    except Exception as err:  # transformers raises many types for unreadable tokenizer files
        raise HFInteropError(
            f"{hf_dir}: transformers cannot load its tokenizer ({err}); fix the tokenizer files or pass --no-tokenizer"
        ) from None
    texts = [t for t in SAMPLE_TEXTS if t.strip() and "<" not in t]
    for text in texts:
        ours, theirs = tok.encode(text), hf_tok.encode(text, add_special_tokens=False)
        if ours != theirs:
            raise HFInteropError(
                f"{hf_dir}: tokenizer.model and the directory's Hugging Face tokenizer disagree on {text!r} "
                f"({ours[:12]} vs {theirs[:12]}); the files do not belong together (mismatched tokenizer). Pass "
                "--no-tokenizer to import the weights only"
            )
