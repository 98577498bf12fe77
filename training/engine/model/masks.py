"""Applying growth masks (``growth.masks.MaskState``) to the modules of megatron model chunks.

The modules of the project's layer spec carry optional mask attributes (``FLMNorm.hidden_mask``,
``FLMCoreAttention.head_mask``/``group_mask``, ``FLMMLP.neuron_mask``,
``FLMTransformerLayer.depth_gate``; the embedding's ``hidden_mask`` is read by a hook of
``build``); with all of them unset the chunks compute the plain model.
"""

from __future__ import annotations

from typing import Optional

from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding

from growth.masks import MaskState
from training.engine.model.attention import FLMCoreAttention
from training.engine.model.layer import FLMTransformerLayer
from training.engine.model.mlp import FLMMLP
from training.engine.model.norms import FLMNorm


def apply_masks(model_chunks, state: MaskState, step: Optional[int] = None) -> bool:
    """Set the growth masks of megatron model chunks to the ramp value at ``step`` (default ``steps_done``).

    Works on any layout: masks are full logical vectors (the modules slice their TP part) and depth
    gates go to layers by global index (``layer_number - 1``). Returns False, with all masks cleared,
    once the ramp is done.
    """
    if state.is_done(step):
        clear_masks(model_chunks)
        return False
    for chunk in model_chunks:
        device = next(chunk.parameters()).device
        v = state.values(step, device=device)
        for module in chunk.modules():
            if isinstance(module, (LanguageModelEmbedding, FLMNorm)):
                module.hidden_mask = v.hidden
            elif isinstance(module, FLMCoreAttention):
                module.head_mask, module.group_mask = v.head, v.group
            elif isinstance(module, FLMMLP):
                module.neuron_mask = v.neuron
            elif isinstance(module, FLMTransformerLayer):
                module.depth_gate = v.depth.get(module.layer_number - 1)
    return True


def clear_masks(model_chunks) -> None:
    """Remove every growth mask: the chunks compute the plain (grown) model."""
    for chunk in model_chunks:
        for module in chunk.modules():
            if isinstance(module, (LanguageModelEmbedding, FLMNorm)):
                module.hidden_mask = None
            elif isinstance(module, FLMCoreAttention):
                module.head_mask = module.group_mask = None
            elif isinstance(module, FLMMLP):
                module.neuron_mask = None
            elif isinstance(module, FLMTransformerLayer):
                module.depth_gate = None
