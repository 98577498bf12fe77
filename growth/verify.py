"""Function-preservation check: the same batch through the old and the grown model (reference forward).

The grown model runs with its MSG masks at c = 0 (ramp step 0). Logits are compared on the
tokenizer's vocabulary (padding rows are forced to the dtype's minimum and may differ in number).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from growth.masks import MaskState


@dataclass(frozen=True)
class VerifyReport:
    max_abs_dlogit: float
    abs_dloss: float
    #: largest |logit| of the old model (the scale for a relative tolerance)
    max_abs_logit: float
    old_loss: float
    new_loss: float

    def within(self, atol: float, rtol: float = 0.0) -> bool:
        """max |dlogit| <= atol + rtol * max |logit|."""
        return self.max_abs_dlogit <= atol + rtol * self.max_abs_logit


def verify(old_cfg, old_state: dict[str, Tensor], new_cfg, new_state: dict[str, Tensor],
           masks: Optional[MaskState], tokens: Tensor, labels: Optional[Tensor] = None) -> VerifyReport:
    """Compare the two models on ``tokens[b, s]``; ``labels`` default to the next tokens (last position dropped)."""
    # imported here: the reference model imports growth.roles/masks, so a top-level import would be circular
    from training.model.reference import reference_logits, token_loss

    with torch.no_grad():
        old = reference_logits(old_cfg, old_state, tokens)
        new = reference_logits(new_cfg, new_state, tokens, masks.values(0, dtype=old.dtype) if masks else None)
    v = old_cfg.vocab_size
    old, new = old[..., :v], new[..., :v]
    if labels is None:
        old_loss, new_loss = token_loss(old[:, :-1], tokens[:, 1:]), token_loss(new[:, :-1], tokens[:, 1:])
    else:
        old_loss, new_loss = token_loss(old, labels), token_loss(new, labels)
    return VerifyReport(
        max_abs_dlogit=(new - old).abs().max().item(),
        abs_dloss=(new_loss - old_loss).abs().item(),
        max_abs_logit=old.abs().max().item(),
        old_loss=old_loss.item(),
        new_loss=new_loss.item(),
    )
