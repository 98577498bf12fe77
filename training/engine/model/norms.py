"""LayerNorm / RMSNorm with optional mask-weighted statistics (MSG hidden-size growth).

Contract: input ``x[..., H]`` -> output ``[..., H]``.
- ``hidden_mask is None``: the standard norm (``F.layer_norm`` / ``F.rms_norm``).
- ``hidden_mask = m`` (shape ``[H]``, 1 on old dims, c in [0, 1] on new ones): statistics are
  weighted by ``m`` (mean = sum(m x) / sum(m), var and mean-square likewise) and the output is
  multiplied by ``m``. At c = 0 the old dims see exactly the statistics of the un-grown model and
  the new dims output 0; at c = 1 it equals the standard norm.

megatron's own norms (``WrappedTorchNorm``) refuse sequence parallelism without Apex; this one
tags its parameters ``sequence_parallel`` so megatron all-reduces their gradients across TP.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class FLMNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_unused):
        super().__init__()
        self.rms = config.normalization == "RMSNorm"
        self.eps = eps
        self.hidden_size = hidden_size
        # created on the default device; ``build.place_model`` moves the whole chunk to the process's device
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = None if self.rms else torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        for p in self.parameters():
            p.sequence_parallel = config.sequence_parallel
        self.hidden_mask: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        if self.hidden_mask is None:
            if self.rms:
                return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
            return F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
        return masked_norm(x, self.hidden_mask.to(x.dtype), self.weight, self.bias, self.eps, self.rms)


def masked_norm(x: Tensor, m: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, rms: bool) -> Tensor:
    """Norm of ``x`` with statistics weighted by ``m``, output multiplied by ``m`` (see module doc)."""
    total = m.sum()
    if rms:
        ms = (x * x * m).sum(-1, keepdim=True) / total
        y = x * torch.rsqrt(ms + eps) * weight
    else:
        mean = (x * m).sum(-1, keepdim=True) / total
        xc = x - mean
        var = (xc * xc * m).sum(-1, keepdim=True) / total
        y = xc * torch.rsqrt(var + eps) * weight + bias
    return y * m
