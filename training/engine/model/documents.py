"""Packed windows as separate documents (``data.reset_at_eos``): Megatron-LM's ``reset_attention_mask``
and ``reset_position_ids``, in the model path both engines run.

``document_inputs(tokens, eos_id)`` gives a micro-batch's position ids and attention mask: a token
attends only to the earlier tokens of its own document, and positions restart at 0 after each eos.
The eos belongs to the document it ends (its label, the next document's first token, is predicted
from that document alone, as in Megatron-LM).

The model honours both: the core attention takes a given mask as the whole mask (causal included;
``training.engine.model.attention``), and ``read_position_ids`` makes a ``GPTModel``'s rotary
embedding read the batch's position ids (megatron-core's RoPE otherwise rotates by the index in the
window and ignores them). xPos scales queries by ``zeta^(n/gamma)`` and keys by ``zeta^(-n/gamma)``
on top of the rotation, so a score carries ``zeta^((m - n)/gamma)``: for the pairs a document mask
leaves (same document) that is the same with window or document positions, and xPos keeps the
window's (centred) positions. So a packed window computes what each of its documents computes run
alone (tested to fp32 rounding).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def document_inputs(tokens: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """(position_ids ``[b, s]``, attention_mask ``[b, 1, s, s]``) of a batch of packed windows;
    the mask is megatron's convention, True = masked out."""
    _, s = tokens.shape
    is_eos = tokens == eos_id
    doc = torch.cumsum(is_eos, dim=1) - is_eos.long()  # the eos belongs to the document it ends
    index = torch.arange(s, device=tokens.device)
    after_eos = torch.where(is_eos, index + 1, torch.zeros_like(index))
    first = torch.cummax(F.pad(after_eos[:, :-1], (1, 0)), dim=1).values  # where each token's document starts
    future = index[None, :] > index[:, None]
    mask = future[None] | (doc[:, :, None] != doc[:, None, :])
    return index - first, mask[:, None]


class DocumentRotary(torch.nn.Module):
    """megatron's ``RotaryEmbedding`` read at the position ids of the forward pass (``[s, b, 1, d]``
    instead of ``[s, 1, 1, d]``); ``position_ids`` is set by the model's forward pre-hook."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.position_ids: Optional[Tensor] = None

    def get_rotary_seq_len(self, *args, **kwargs) -> int:
        return self.inner.get_rotary_seq_len(*args, **kwargs)

    def forward(self, max_seq_len: int, offset: int = 0, packed_seq: bool = False, cp_group=None) -> Tensor:
        table = self.inner(max_seq_len, offset, packed_seq, cp_group)
        if self.position_ids is None:
            return table
        return table[:, 0, 0][self.position_ids.t()].unsqueeze(2)


def _keep_position_ids(gpt, args, kwargs):
    rotary = gpt.rotary_pos_emb
    rotary.position_ids = args[1] if len(args) > 1 else kwargs.get("position_ids")


def read_position_ids(gpt: torch.nn.Module) -> None:
    """Make ``gpt`` (a megatron ``GPTModel`` with RoPE) rotate queries and keys by the position ids
    it is called with. Refused with megatron's fused RoPE, whose kernel takes one position table for
    the whole batch."""
    if gpt.config.apply_rope_fusion:
        raise ValueError(
            "data.reset_at_eos reads per-document positions: it needs the unfused RoPE (apply_rope_fusion)"
        )
    gpt.rotary_pos_emb = DocumentRotary(gpt.rotary_pos_emb)
    gpt.register_forward_pre_hook(_keep_position_ids, with_kwargs=True)
