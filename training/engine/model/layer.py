"""Transformer layer with an optional depth gate (MSG depth growth).

``depth_gate = c`` (a float or 0-dim tensor) makes the layer compute ``h + c * (Layer(h) - h)``:
the identity at c = 0, the plain layer at c = 1. ``None`` (the default) is the plain layer.
"""

from __future__ import annotations

from megatron.core.transformer.transformer_layer import TransformerLayer


class FLMTransformerLayer(TransformerLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.depth_gate = None

    def forward(self, *args, **kwargs):
        if self.depth_gate is None:
            return super().forward(*args, **kwargs)
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        out, context = super().forward(*args, **kwargs)
        return h + self.depth_gate * (out - h), context
