"""A project checkpoint as an ``eval_iq`` model backend (``flm iq --model flm --checkpoint CKPT``).

``load_backend(checkpoint_dir)`` reads the checkpoint (saved under any TP/PP/DP layout, or written
by ``flm grow`` / ``flm import-hf``) as logical tensors into this one process and returns a
:class:`CheckpointBackend` implementing ``eval_iq.adapter.CausalLMBackend``:

- ``logits(tokens)``: ``growth.reference.reference_logits`` in float32 on CPU (the plain-torch
  forward that is tested equal to the megatron model), with the checkpoint's MSG growth masks at
  their saved ramp value, so a grown model mid-ramp is evaluated as the function it computes;
  the padded vocabulary columns are left out (``[b, s, vocab_size]``);
- ``encode``: the run's tokenizer (sentencepiece or Hugging Face, ``training.data.tokenizer_base.BaseTokenizer``),
  no BOS (the model was trained without one); ``decode`` drops the special tokens as transformers'
  ``skip_special_tokens`` does;
- ``eos_token_id``/``bos_token_id`` from the tokenizer, ``max_length`` = ``model.seq_length``
  (what ``flm export-hf`` writes as ``max_position_embeddings``, so lm-eval's ``hf`` backend on the
  export truncates identically).

The tokenizer is found as ``flm export-hf`` finds it (:func:`training.hf.tokenizer.checkpoint_tokenizer`):
recorded by ``flm import-hf``, else the run's ``data:`` section, else a grown checkpoint's source.
Every problem (not a checkpoint, mock data without a tokenizer, a tokenizer of another vocabulary)
raises :class:`CheckpointBackendError` naming the file and the fix (its own error: the
training side does not import ``eval_iq``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from growth import roles as R
from growth.reference import reference_logits
from training.checkpoint import CheckpointError, read_meta, resolve
from training.checkpoint.logical import read_logical
from training.config import ModelConfig
from training.config_base import from_dict
from training.errors import FLMError
from training.hf.compare import checkpoint_masks
from training.hf.errors import HFInteropError
from training.hf.tokenizer import checkpoint_tokenizer

IQ_HINT = (
    "the benchmark needs the tokenizer the model was trained with: export the checkpoint with "
    "`flm export-hf CKPT OUT --tokenizer PATH` and run `flm iq --model hf --model-path OUT`"
)


class CheckpointBackendError(FLMError):
    """A checkpoint cannot be evaluated (not a checkpoint, no tokenizer, a mismatched tokenizer);
    the message names the checkpoint and the fix."""


class CheckpointBackend:
    """``CausalLMBackend`` over a logical state dict (see the module docstring)."""

    device = "cpu"

    def __init__(self, cfg, state: dict[str, torch.Tensor], tokenizer, masks=None) -> None:
        self.cfg = cfg
        self.state = {k: v.to(torch.float32) for k, v in state.items()}
        self.masks = masks
        self.tokenizer = tokenizer
        self.eos_token_id = int(tokenizer.eos_id)
        self.bos_token_id = int(tokenizer.bos_id) if tokenizer.bos_id >= 0 else None
        self.max_length = int(cfg.seq_length)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return reference_logits(self.cfg, self.state, tokens.to(torch.long).cpu(), self.masks)[
                ..., : self.cfg.vocab_size
            ]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def load_backend(checkpoint_dir: str | Path, tokenizer: Optional[str | Path] = None) -> CheckpointBackend:
    """The backend of checkpoint ``checkpoint_dir`` (a ``step_N`` directory or a root with ``latest``);
    ``tokenizer`` overrides the checkpoint's tokenizer. Raises CheckpointBackendError."""
    try:
        path = resolve(checkpoint_dir)
        meta = read_meta(path)
        cfg = from_dict(ModelConfig, meta["config"]["model"])
        tok, _ = checkpoint_tokenizer(path, meta, tokenizer, hint=IQ_HINT)
        params, _ = read_logical(path)
    except (CheckpointError, HFInteropError) as err:
        raise CheckpointBackendError(f"cannot evaluate checkpoint {checkpoint_dir}: {err}") from None
    state = {k: params[k] for k in R.logical_keys(cfg)}
    masks = checkpoint_masks(meta)
    return CheckpointBackend(cfg, state, tok, None if masks is None else masks.values())
