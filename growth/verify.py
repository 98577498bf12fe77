"""Function-preservation check: the same batch through the old and the grown model (reference forward).

The grown model runs with its MSG masks at c = 0 (ramp step 0). Logits are compared on the
tokenizer's vocabulary (padding rows are forced to the dtype's minimum and may differ in number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from torch import Tensor

from growth.masks import MaskState
from growth.reference import forward_logits, layer_slices, token_loss


@dataclass(frozen=True)
class VerifyReport:
    """The old and the grown model on the same batch: the largest logit difference (over the
    tokenizer's vocabulary) and both models' mean token losses."""

    max_abs_dlogit: float
    abs_dloss: float
    #: largest |logit| of the old model (the scale for a relative tolerance)
    max_abs_logit: float
    old_loss: float
    new_loss: float

    def within(self, atol: float, rtol: float = 0.0) -> bool:
        """max |dlogit| <= atol + rtol * max |logit|."""
        return self.max_abs_dlogit <= atol + rtol * self.max_abs_logit


class Weights(Protocol):
    """Where a forward pass gets a model's logical weights: non-layered tensors by key (None when
    the variant has none) and the per-layer slices of one layer at a time."""

    def tensor(self, key: str) -> Optional[Tensor]:
        """The full logical tensor of a non-layered ``key`` (embedding, final norm, output layer); None
        when the model variant has none (e.g. the output layer under tied embeddings)."""
        ...

    def layer(self, index: int) -> dict[str, Tensor]:
        """Layer ``index``'s slice (the leading layer axis removed) of every layered tensor, by key."""
        ...


@dataclass(frozen=True)
class StateWeights:
    """``Weights`` over an in-memory logical state dict."""

    state: dict[str, Tensor]

    def tensor(self, key: str) -> Optional[Tensor]:
        """``state[key]``, None when absent."""
        return self.state.get(key)

    def layer(self, index: int) -> dict[str, Tensor]:
        """``growth.reference.layer_slices(state, index)``."""
        return layer_slices(self.state, index)


def verify(
    old_cfg,
    old_state: dict[str, Tensor],
    new_cfg,
    new_state: dict[str, Tensor],
    masks: Optional[MaskState],
    tokens: Tensor,
    labels: Optional[Tensor] = None,
) -> VerifyReport:
    """Compare the two models on ``tokens[b, s]`` in the states' dtype; ``labels`` default to the next
    tokens (last position dropped)."""
    return verify_weights(
        old_cfg,
        StateWeights(old_state),
        new_cfg,
        StateWeights(new_state),
        masks,
        tokens,
        labels,
        dtype=next(iter(old_state.values())).dtype,
    )


def verify_weights(
    old_cfg,
    old: Weights,
    new_cfg,
    new: Weights,
    masks: Optional[MaskState],
    tokens: Tensor,
    labels: Optional[Tensor] = None,
    dtype: torch.dtype = torch.float64,
) -> VerifyReport:
    """``verify`` with weights fetched layer by layer (e.g. from checkpoints on disk), computed in ``dtype``."""
    with torch.no_grad():
        old_logits = forward_logits(old_cfg, old.tensor, old.layer, tokens, None, dtype)
        new_logits = forward_logits(
            new_cfg, new.tensor, new.layer, tokens, masks.values(0, dtype=dtype) if masks else None, dtype
        )
    return compare_logits(old_cfg, old_logits, new_logits, tokens, labels)


def compare_logits(
    old_cfg, old_logits: Tensor, new_logits: Tensor, tokens: Tensor, labels: Optional[Tensor] = None
) -> VerifyReport:
    """The report of two models' logits ``[b, s, V]`` on ``tokens`` (compared over the tokenizer's
    vocabulary, ``old_cfg.vocab_size``); ``labels`` default to the next tokens (last position dropped)."""
    v = old_cfg.vocab_size
    old_logits, new_logits = old_logits[..., :v], new_logits[..., :v]
    if labels is None:
        old_loss = token_loss(old_logits[:, :-1], tokens[:, 1:])
        new_loss = token_loss(new_logits[:, :-1], tokens[:, 1:])
    else:
        old_loss, new_loss = token_loss(old_logits, labels), token_loss(new_logits, labels)
    return VerifyReport(
        max_abs_dlogit=(new_logits - old_logits).abs().max().item(),
        abs_dloss=(new_loss - old_loss).abs().item(),
        max_abs_logit=old_logits.abs().max().item(),
        old_loss=old_loss.item(),
        new_loss=new_loss.item(),
    )
