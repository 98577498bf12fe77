"""Core attention: megatron's ``DotProductAttention`` plus xPos and growth head masks.

Inputs (megatron layout, after RoPE): query ``[s, b, heads_local, d]``, key/value
``[s, b, groups_local, d]``; output ``[s, b, heads_local * d]``.

- xPos (Sun et al. 2022, as used by FLM-101B): after rotary embedding, query dims are scaled by
  ``zeta ** (n / scale_base)`` and key dims by ``zeta ** (-n / scale_base)`` at position ``n``, with
  ``zeta_i = (2i / d + 0.4) / 1.4`` for frequency index ``i`` (both halves of a rotary pair share
  ``zeta_i``). Positions are centred (``n - floor(s / 2)``) as in torchscale; the scores depend only
  on ``m - n``, so centring changes nothing but keeps the factors near 1.
- Head masks (MSG head growth): ``head_mask[heads]`` and ``group_mask[groups]`` over the *logical*
  heads/groups of the layer (1 = old, c = new); this rank's slice is taken by TP rank. Queries and
  each head's output are multiplied per head, keys and values per group; at c = 0 a new head
  contributes exactly 0, also when it joins an existing query group (whose keys/values are shared
  with old heads, so masking the query alone would leave it attending uniformly).
- ``fused=True`` (the default of the layer spec): the scores, softmax, dropout and weighted sum run
  in one call of ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient
  kernels on GPU, the fused kernel on CPU) instead of megatron's baddbmm + softmax + bmm. Same
  math: scale ``1/sqrt(d)`` (megatron's query-key layer scaling only rescales inside its softmax), causal
  mask (or, when an ``attention_mask`` is given — ``data.reset_at_eos`` —, that mask, as megatron's
  unfused softmax takes it), groups expanded to their heads as megatron does (GQA), attention dropout with probability
  ``attention_dropout`` only in training mode, drawn inside the model-parallel RNG tracker like
  megatron's. xPos and head masks are applied around it, identically for both paths.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from torch import Tensor


def xpos_factors(seq_len: int, head_dim: int, scale_base: float, device, dtype) -> Tensor:
    """``[s, 1, 1, d]`` factors for queries (keys use the reciprocal)."""
    half = head_dim // 2
    zeta = (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) + 0.4 * head_dim) / (1.4 * head_dim)
    pos = torch.arange(seq_len, device=device, dtype=torch.float64) - (seq_len // 2)
    scale = zeta[None, :] ** (pos[:, None] / scale_base)  # [s, d/2]
    assert scale.shape[1] == half
    return torch.cat([scale, scale], dim=-1)[:, None, None, :].to(dtype)


def _local_slice(mask: Tensor) -> Tensor:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    n = mask.shape[0] // tp
    return mask[rank * n : (rank + 1) * n]


#: torch >= 2.5's SDPA takes keys/values with fewer heads (``enable_gqa``: head h reads group
#: h // (heads / groups), megatron's grouping); older torch gets them expanded by repeat_interleave
SDPA_NATIVE_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


class FLMCoreAttention(DotProductAttention):
    def __init__(self, *args, xpos_scale_base: Optional[float] = None, fused: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.xpos_scale_base = xpos_scale_base
        self.fused = fused
        if fused and (self.config.softmax_type != "vanilla" or self.config.window_size is not None):
            raise ValueError(
                "fused core attention supports vanilla softmax without sliding windows; use train.attention=unfused"
            )
        self.head_mask: Optional[Tensor] = None
        self.group_mask: Optional[Tensor] = None
        self._xpos_cache: dict = {}

    def _xpos(self, seq_len: int, head_dim: int, device, dtype) -> Tensor:
        key = (seq_len, head_dim, device, dtype)
        if key not in self._xpos_cache:
            self._xpos_cache = {key: xpos_factors(seq_len, head_dim, self.xpos_scale_base, device, dtype)}
        return self._xpos_cache[key]

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if self.xpos_scale_base is not None:
            f = self._xpos(query.shape[0], query.shape[-1], query.device, query.dtype)
            query = query * f
            key = key / f
        if self.head_mask is None:
            return self._core(query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params)
        hm = _local_slice(self.head_mask).to(query.dtype)
        gm = _local_slice(self.group_mask).to(query.dtype)
        query = query * hm[None, None, :, None]
        key = key * gm[None, None, :, None]
        value = value * gm[None, None, :, None]
        context = self._core(query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params)
        s, b, _ = context.shape
        return (context.view(s, b, hm.shape[0], -1) * hm[None, None, :, None]).view(s, b, -1)

    def _core(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask,
        attn_mask_type,
        attention_bias,
        packed_seq_params,
    ) -> Tensor:
        if not self.fused:
            if attention_mask is not None and self.config.masked_softmax_fusion:
                # megatron's fused causal softmax kernel would drop the mask
                raise ValueError("a document attention mask (data.reset_at_eos) needs masked_softmax_fusion off")
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params)
        assert packed_seq_params is None and attention_bias is None, "not supported by the project's core attention"
        heads, groups = self.num_attention_heads_per_partition, self.num_query_groups_per_partition
        gqa = {}
        if heads > groups:  # GQA: every head of a group sees its group's key/value (as megatron expands them)
            if SDPA_NATIVE_GQA:  # SDPA broadcasts the groups itself: no expanded copy of keys and values
                gqa = {"enable_gqa": True}
            else:
                key = key.repeat_interleave(heads // groups, dim=2)
                value = value.repeat_interleave(heads // groups, dim=2)
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        # a given mask is the whole mask (data.reset_at_eos: causal within each document), as in
        # megatron's unfused softmax; megatron: True = masked out, SDPA: True = attends
        causal = mask_type == AttnMaskType.causal and attention_mask is None
        mask = None if attention_mask is None else ~attention_mask
        p = self.attention_dropout.p if self.training else 0.0
        # megatron divides softmax_scale by the layer number under query-key layer scaling and
        # multiplies it back inside its softmax: the net scale is the plain one
        scale = self.softmax_scale * (self.layer_number if self.config.apply_query_key_layer_scaling else 1)

        def attend() -> Tensor:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=scale, **gqa
            )

        if p > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = attend()
        else:
            context = attend()
        s, b = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(s, b, -1)
