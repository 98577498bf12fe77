"""The MLP with an optional growth mask on new neurons' pre-activation (MSG FFN growth).

``neuron_mask[ffn]`` is over the *logical* neurons (1 = old, c = new); this rank's slice is taken
by TP rank. GELU: ``gelu(m * z)``; SwiGLU: ``silu(m * gate) * up``. At c = 0 a new neuron outputs
exactly 0 (GELU(0) = SiLU(0) = 0), whatever its weights.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.transformer.mlp import MLP
from torch import Tensor

from training.engine.model.attention import _local_slice


class FLMMLP(MLP):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.neuron_mask: Optional[Tensor] = None

    def forward(self, hidden_states: Tensor, per_token_scale=None, **kwargs):
        if self.neuron_mask is None:
            return super().forward(hidden_states, per_token_scale, **kwargs)
        inter, bias = self.linear_fc1(hidden_states)
        if bias is not None:
            inter = inter + bias
        m = _local_slice(self.neuron_mask).to(inter.dtype)
        if self.config.gated_linear_unit:
            gate, up = torch.chunk(inter, 2, dim=-1)
            inter = self.config.activation_func(gate * m) * up
        else:
            inter = self.config.activation_func(inter * m)
        return self.linear_fc2(inter)
