"""``flm export-hf CKPT OUT``: a project checkpoint as a transformers model directory.

``export_checkpoint(ckpt, out, ...)`` picks the architecture that computes the variant of ``ckpt``
(saved under any TP/PP/DP layout, or written by ``flm grow`` / ``flm import-hf``) exactly
(:mod:`training.hf.architectures`) and streams the checkpoint into ``out`` one tensor at a time:
each exported tensor is read as a logical tensor (one layer of it for the per-layer tensors,
:class:`training.checkpoint.dcp_io.TensorReader`, touching only the stored chunks it needs), its
padded vocabulary rows are trimmed and the muP multipliers folded (:class:`training.hf.fold.Fold`),
it is converted (:class:`training.hf.pieces.Piece`) and written into its safetensors shard
(:func:`training.hf.safetensors_io.write_shards`), and dropped. Memory: about two copies of the
largest tensor (its stored form and its export form), never the model. ``out`` gets:

- ``config.json``, ``generation_config.json`` (special token ids);
- for the FLM architecture, ``configuration_flm.py`` and ``modeling_flm.py`` (load with
  ``trust_remote_code=True``; :mod:`training.hf.flm_arch`);
- ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + index (``max_shard_size``);
- the tokenizer (:mod:`training.hf.tokenizer`): a sentencepiece one converted (``tokenizer.json``,
  ``tokenizer_config.json``, ``tokenizer.model``), a Hugging Face one as its original files;
- ``flm_export.json``: source checkpoint, step, model config, architecture, what was folded, the
  tokenizer's SHA-256, and the round-trip check when one was run;
- ``README.md``: the model card (:mod:`training.hf.model_card`).

Contracts: ``out`` must not exist and nothing is left there on failure (files are written to a
hidden staging directory and renamed); a checkpoint whose MSG growth masks are still ramping is
refused (the plain grown model is a different function until the ramp ends); with ``check`` the
staged directory is loaded back with transformers and must match the project model
(:mod:`training.hf.compare`) before it is moved into place (the check holds both models in memory).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import GenerationConfig

from growth import roles as R
from training.checkpoint import read_meta, resolve
from training.checkpoint.dcp_io import TensorReader
from training.config import ModelConfig
from training.config_base import from_dict
from training.hf.architectures import Architecture, SpecialIds, check_against_model, select_architecture
from training.hf.compare import DTYPES, Comparison, checkpoint_masks, compare, load_hf_model, random_tokens
from training.hf.errors import HFInteropError, RoundTripMismatch
from training.hf.flm_arch import copy_code
from training.hf.fold import Fold
from training.hf.model_card import write_model_card
from training.hf.pieces import Piece
from training.hf.safetensors_io import Planned, parse_size, write_shards
from training.hf.tokenizer import checkpoint_tokenizer, save_hf_tokenizer

EXPORT_RECORD = "flm_export.json"


@dataclass
class ExportReport:
    src: Path
    out: Path
    architecture: str
    dtype: str
    files: list[str]
    tokenizer: Optional[dict[str, Any]]
    check: Optional[Comparison]

    def summary(self) -> str:
        tok = (
            f"tokenizer {self.tokenizer['source']} ({self.tokenizer['vocab_size']} ids)"
            if self.tokenizer
            else "no tokenizer (--no-tokenizer)"
        )
        lines = [
            f"exported {self.src} -> {self.out}: {self.architecture} ({self.dtype}), "
            f"{len([f for f in self.files if f.endswith('.safetensors')])} safetensors file(s), {tok}"
        ]
        if self.check is not None:
            lines.append(self.check.summary())
        return "\n".join(lines)


def _check_model_tensors(reader: TensorReader, cfg, src: Path) -> None:
    missing = [k for k in R.logical_keys(cfg) if k not in reader]
    if missing:
        raise HFInteropError(
            f"{src} lacks model tensors {missing[:4]} that its config implies; the checkpoint "
            "is damaged or was written by another tool"
        )


class _Source:
    """The export-state tensors of a checkpoint, read and folded one (key, layer) at a time; the
    last one is kept for the next pieces of the same source (a mapping lists them together)."""

    def __init__(self, reader: TensorReader, fold: Fold) -> None:
        self.reader, self.fold = reader, fold
        self._at: Optional[tuple[str, Optional[int]]] = None
        self._tensor: Optional[torch.Tensor] = None

    def produce(self, piece: Piece) -> torch.Tensor:
        if self._at != (piece.key, piece.layer) or self._tensor is None:
            self._at, self._tensor = None, None  # drop the previous source before reading the next
            if piece.layer is None:
                raw = self.reader.read(piece.key)
            else:
                raw = self.reader.read(piece.key, piece.layer, 1)[0]
            self._tensor = self.fold(piece.key, raw)
            self._at = (piece.key, piece.layer)
        return piece.fn(self._tensor)


def _plan(arch: Architecture, cfg, reader: TensorReader, fold: Fold) -> dict[str, Planned]:
    """Every exported tensor with its shape and dtype (the mapping run on meta tensors) and how it is
    produced from the checkpoint."""
    source = _Source(reader, fold)
    planned = {}
    for name, piece in arch.tensors(cfg, reader.shape(R.QKV_WEIGHT)[0]).items():
        stored = reader.shape(piece.key)
        shape = fold.shape(piece.key, stored) if piece.layer is None else stored[1:]
        meta = piece.fn(torch.empty(shape, dtype=fold.dtype, device="meta"))
        planned[name] = Planned(tuple(meta.shape), meta.dtype, functools.partial(source.produce, piece))
    return planned


def _model_state(reader: TensorReader, cfg) -> dict[str, torch.Tensor]:
    """The whole logical model (the round-trip check's project side only)."""
    return {k: reader.read(k) for k in R.logical_keys(cfg)}


def export_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    *,
    tokenizer: Optional[str | Path] = None,
    no_tokenizer: bool = False,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    check: bool = False,
    architecture: str = "auto",
    license: Optional[str] = None,
) -> ExportReport:
    """Export ``ckpt`` to the transformers directory ``out`` (see the module docstring).

    ``tokenizer``: tokenizer directory, ``.model`` or ``tokenizer.json`` (default: the checkpoint's own, see
    :func:`training.hf.tokenizer.checkpoint_tokenizer`); ``no_tokenizer``: weights and config only.
    ``dtype``: ``auto`` (the checkpoint's) or float32/float64/bfloat16/float16. ``architecture``:
    ``auto`` (a standard transformers architecture when one computes the variant, else the project's
    own FLM code), ``standard`` or ``flm`` (:func:`training.hf.architectures.select_architecture`).
    ``license``: the Hub license identifier the model card states (none when None).
    Raises HFInteropError (or CheckpointError for a path that is not a checkpoint).
    """

    out = Path(out)
    if out.exists():
        raise HFInteropError(f"refusing to overwrite {out}; choose a new output directory")
    src = resolve(ckpt)
    meta = read_meta(src)
    cfg = from_dict(ModelConfig, meta["config"]["model"])
    arch = select_architecture(cfg, architecture)
    masks = checkpoint_masks(meta)
    if masks is not None and not masks.is_done():
        raise HFInteropError(
            f"{src} is a grown model whose MSG masks are still ramping (c = {masks.value():.3f} after "
            f"{masks.steps_done} of {masks.ramp_steps} steps): its function is not that of the plain grown model. "
            f"Train at least {masks.ramp_steps - masks.steps_done} more steps, then export; or evaluate it with "
            "`flm iq --model flm --checkpoint CKPT`"
        )
    if tokenizer is not None and no_tokenizer:
        raise HFInteropError("--tokenizer and --no-tokenizer contradict each other; give one")
    tok = None if no_tokenizer else checkpoint_tokenizer(src, meta, tokenizer)[0]
    shard_bytes = parse_size(max_shard_size)
    reader = TensorReader(src)
    _check_model_tensors(reader, cfg, src)
    if dtype == "auto":
        target = reader.dtype(R.EMBEDDING)
    elif dtype in DTYPES:
        target = DTYPES[dtype]
    else:
        raise HFInteropError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    fold = Fold(cfg, reader.shape(R.EMBEDDING)[0], target, fold=arch.folds_multipliers)
    ids = (
        SpecialIds()
        if tok is None
        else SpecialIds(*(i if i >= 0 else None for i in (tok.bos_id, tok.eos_id, tok.pad_id)))
    )
    hf_config = arch.config(cfg, cfg.vocab_size, ids, target)
    hf_config.architectures = [arch.class_name]
    tensors = check_against_model(arch, hf_config, _plan(arch, cfg, reader, fold))

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        files = _write(staging, hf_config, tensors, shard_bytes)
        if arch.remote_code:
            files += copy_code(staging)
        tok_record = None if tok is None else save_hf_tokenizer(tok, staging, cfg.seq_length)
        comparison = None
        if check:
            tokens = random_tokens(cfg.vocab_size, min(cfg.seq_length, 128))
            values = None if masks is None else masks.values()
            state = _model_state(reader, cfg)
            comparison = compare(cfg, state, load_hf_model(staging, target), tokens, values)
            if comparison.within is False:
                raise RoundTripMismatch(
                    f"the exported model does not compute what {src} does: {comparison.summary()}; "
                    "nothing was written. This is a bug; please report it with the model config"
                )
        record = {
            "source": str(src),
            "step": meta.get("step"),
            "architecture": arch.class_name,
            "dtype": str(target).replace("torch.", ""),
            "model": meta["config"]["model"],
            "folded": fold.record,
            "tokenizer": tok_record,
            "check": None if comparison is None else comparison.to_dict(),
        }
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2))
        write_model_card(staging, src, meta, record, name=out.name, license=license)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(src, out, arch.class_name, str(target).replace("torch.", ""), files, tok_record, comparison)


def _write(staging: Path, hf_config, tensors: dict[str, Planned], shard_bytes: int) -> list[str]:

    hf_config.save_pretrained(str(staging))
    GenerationConfig(
        bos_token_id=hf_config.bos_token_id, eos_token_id=hf_config.eos_token_id, pad_token_id=hf_config.pad_token_id
    ).save_pretrained(str(staging))
    return write_shards(tensors, staging, shard_bytes)
