"""A plain-torch functional forward of the project's model on logical tensors.

``reference_logits(cfg, state, tokens, masks)`` computes the logits of the model described by
``training.config.ModelConfig`` ``cfg`` from a *logical* state dict (``training.checkpoint.logical``:
unsharded, layers stacked on dim 0; see
``growth.roles``). It is written from the model's math, not from megatron's code, so the two can
check each other; it works in the state's dtype (float64 for exactness tests) and supports the
growth masks (``growth.masks.MaskValues``) with the same semantics as ``training/engine/model``.
Under μP (``cfg.mup``) the attention scores are ``attention_multiplier * q.k / d_head`` and the
logits are multiplied by ``output_multiplier / m`` (``ModelConfig.attention_scale`` /
``readout_multiplier``); the weights carry the rest of the parametrisation (docs/mup.md).

The conversion between a megatron ``GPTModel`` and a logical state dict is the model's
(``training.engine.model.state``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from growth import roles as R
from growth.errors import GrowthError
from growth.masks import MaskValues


def _norm(x: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float, rms: bool, mask: Optional[Tensor]) -> Tensor:
    """LayerNorm/RMSNorm over the last dim; with ``mask`` the statistics are mask-weighted and the
    output is multiplied by the mask."""
    m = torch.ones_like(weight) if mask is None else mask
    total = m.sum()
    if rms:
        y = x * torch.rsqrt((x * x * m).sum(-1, keepdim=True) / total + eps) * weight
    else:
        xc = x - (x * m).sum(-1, keepdim=True) / total
        y = xc * torch.rsqrt((xc * xc * m).sum(-1, keepdim=True) / total + eps) * weight
        if bias is not None:
            y = y + bias
    return y if mask is None else y * mask


def _rotate_half(t: Tensor) -> Tensor:
    t1, t2 = t.chunk(2, dim=-1)
    return torch.cat([-t2, t1], dim=-1)


def _rope(t: Tensor, base: float) -> Tensor:
    """Rotary embedding of ``t[b, s, heads, d]`` at positions 0..s-1 (dims j and j + d/2 form a pair)."""
    s, d = t.shape[1], t.shape[-1]
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = torch.outer(torch.arange(s, dtype=torch.float64), inv_freq)
    angle = torch.cat([angle, angle], dim=-1)[None, :, None, :]
    return t * angle.cos().to(t.dtype) + _rotate_half(t) * angle.sin().to(t.dtype)


def _xpos_scale(s: int, d: int, scale_base: float) -> Tensor:
    """``[1, s, 1, d]``: zeta_i ** ((n - s // 2) / scale_base), zeta_i = (2i/d + 0.4) / 1.4, per pair i."""
    zeta = (2 * torch.arange(d // 2, dtype=torch.float64) / d + 0.4) / 1.4
    n = torch.arange(s, dtype=torch.float64) - s // 2
    scale = zeta[None, :] ** (n[:, None] / scale_base)
    return torch.cat([scale, scale], dim=-1)[None, :, None, :]


def _attention(
    cfg, x: Tensor, w: Tensor, b: Optional[Tensor], proj_w: Tensor, proj_b: Optional[Tensor], masks: MaskValues
) -> Tensor:
    bsz, s, _ = x.shape
    nq, ng, d = cfg.num_attention_heads, cfg.query_groups, cfg.head_dim
    r = nq // ng
    qkv = F.linear(x, w, b).view(bsz, s, ng, r + 2, d)
    q = qkv[:, :, :, :r].reshape(bsz, s, nq, d)
    k, v = qkv[:, :, :, r], qkv[:, :, :, r + 1]
    q, k = _rope(q, cfg.rotary_base), _rope(k, cfg.rotary_base)
    if cfg.position_embedding == "xpos":
        f = _xpos_scale(s, d, cfg.xpos_scale_base).to(x.dtype)
        q, k = q * f, k / f
    if masks.head is not None:
        if masks.group is None:
            raise ValueError("MaskValues: a head mask needs its group mask (growth.masks sets both)")
        q = q * masks.head.to(x.dtype)[:, None]
        k = k * masks.group.to(x.dtype)[:, None]
        v = v * masks.group.to(x.dtype)[:, None]
    group_of_head = torch.arange(nq) // r
    k, v = k[:, :, group_of_head], v[:, :, group_of_head]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
    # standard: / sqrt(d); μP: x attention_multiplier / d (ModelConfig.attention_scale)
    scores = scores / math.sqrt(d) if cfg.mup is None else scores * cfg.attention_scale
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
    ctx = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    if masks.head is not None:  # a new head outputs exactly 0 at c = 0, also inside an old group
        ctx = ctx * masks.head.to(x.dtype)[:, None]
    ctx = ctx.reshape(bsz, s, nq * d)
    return F.linear(ctx, proj_w, proj_b)


def _mlp(
    cfg, x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor], masks: MaskValues
) -> Tensor:
    z = F.linear(x, w1, b1)
    m = None if masks.neuron is None else masks.neuron.to(x.dtype)
    if cfg.activation == "swiglu":
        gate, up = z.chunk(2, dim=-1)
        h = F.silu(gate if m is None else gate * m) * up
    else:
        h = F.gelu(z if m is None else z * m)
    return F.linear(h, w2, b2)


#: rows of the output matrix converted to the activations' dtype at a time (bounds the memory of a
#: float64 check on a float32 checkpoint to a block, not a second copy of the vocabulary matrix)
_OUTPUT_BLOCK_ROWS = 8192


def _output_logits(y: Tensor, w: Tensor) -> Tensor:
    if w.dtype == y.dtype:
        return F.linear(y, w)
    return torch.cat(
        [F.linear(y, w[r : r + _OUTPUT_BLOCK_ROWS].to(y.dtype)) for r in range(0, w.shape[0], _OUTPUT_BLOCK_ROWS)],
        dim=-1,
    )


def _converted(weights: dict[str, Tensor], dtype: torch.dtype, key: str) -> Optional[Tensor]:
    """``weights[key]`` in ``dtype`` (None if absent), converted when used: one weight in ``dtype`` at a time."""
    t = weights.get(key)
    return None if t is None else t.to(dtype)


def _need(fetch: Callable[[str], Optional[Tensor]], key: str) -> Tensor:
    """``fetch(key)``, which the model config needs (GrowthError naming the key when absent)."""
    t = fetch(key)
    if t is None:
        raise GrowthError(f"the weights have no {key!r}, which this model config needs")
    return t


def forward_logits(
    cfg,
    tensor: Callable[[str], Optional[Tensor]],
    layer: Callable[[int], dict[str, Tensor]],
    tokens: Tensor,
    masks: Optional[MaskValues] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """``reference_logits`` with the weights fetched on demand, one layer at a time.

    ``tensor(key)``: a non-layered logical tensor (None if the variant has none); ``layer(i)``:
    ``{logical key: layer i's slice}`` for the per-layer keys. ``dtype``: the computation dtype
    (default: the embedding's); weights are converted as they are used, so a float64 check of a
    float32 checkpoint holds one layer (and a block of the output matrix) in float64 at a time.
    The composition of ``embed``, ``run_layers`` over every layer and ``head_logits``, which a
    caller may run in pieces (e.g. the layers spread over processes, activations passed along).
    """
    dtype = dtype or _need(tensor, R.EMBEDDING).dtype
    x = embed(cfg, tensor, tokens, masks, dtype)
    x = run_layers(cfg, layer, x, range(cfg.num_layers), masks)
    return head_logits(cfg, tensor, x, masks)


def embed(
    cfg, tensor: Callable[[str], Optional[Tensor]], tokens: Tensor, masks: Optional[MaskValues], dtype: torch.dtype
) -> Tensor:
    """The residual stream entering layer 0: ``E[tokens] * input_multiplier`` (times the hidden mask), in ``dtype``."""
    masks = masks or MaskValues()
    x = _need(tensor, R.EMBEDDING)[tokens].to(dtype) * cfg.input_multiplier
    return x if masks.hidden is None else x * masks.hidden.to(dtype)


def run_layers(
    cfg, layer: Callable[[int], dict[str, Tensor]], x: Tensor, layers: range, masks: Optional[MaskValues]
) -> Tensor:
    """The residual stream ``x`` (entering layer ``layers.start``) through ``layers``, in ``x``'s dtype;
    ``layer(i)`` is fetched once per layer, in order."""
    masks = masks or MaskValues()
    rms = cfg.normalization == "RMSNorm"
    dtype = x.dtype
    hm = None if masks.hidden is None else masks.hidden.to(dtype)
    for i in layers:
        c = partial(_converted, layer(i), dtype)
        h = x
        w = partial(_need, c)
        a = _norm(x, w(R.NORM1_WEIGHT), c(R.NORM1_BIAS), cfg.norm_eps, rms, hm)
        x = x + _attention(cfg, a, w(R.QKV_WEIGHT), c(R.QKV_BIAS), w(R.PROJ_WEIGHT), c(R.PROJ_BIAS), masks)
        m = _norm(x, w(R.NORM2_WEIGHT), c(R.NORM2_BIAS), cfg.norm_eps, rms, hm)
        x = x + _mlp(cfg, m, w(R.FC1_WEIGHT), c(R.FC1_BIAS), w(R.FC2_WEIGHT), c(R.FC2_BIAS), masks)
        gate = masks.depth.get(i)
        if gate is not None:
            x = h + gate * (x - h)
    return x


def head_logits(
    cfg, tensor: Callable[[str], Optional[Tensor]], x: Tensor, masks: Optional[MaskValues] = None
) -> Tensor:
    """The logits of the residual stream ``x`` after the last layer: final norm, readout (the embedding
    under tied embeddings) times ``readout_multiplier``, padded vocabulary rows at the dtype's minimum."""
    masks = masks or MaskValues()
    rms = cfg.normalization == "RMSNorm"
    dtype = x.dtype
    hm = None if masks.hidden is None else masks.hidden.to(dtype)
    bias = tensor(R.FINAL_NORM_BIAS)
    y = _norm(
        x, _need(tensor, R.FINAL_NORM_WEIGHT).to(dtype), None if bias is None else bias.to(dtype), cfg.norm_eps, rms, hm
    )
    out_w = _need(tensor, R.EMBEDDING) if cfg.tie_embeddings else _need(tensor, R.OUTPUT)
    logits = _output_logits(y, out_w) * cfg.readout_multiplier  # output_multiplier (/ m under μP)
    pad = torch.arange(logits.shape[-1], device=logits.device) >= cfg.vocab_size
    return logits.masked_fill(pad, torch.finfo(logits.dtype).min)


def reference_logits(cfg, state: dict[str, Tensor], tokens: Tensor, masks: Optional[MaskValues] = None) -> Tensor:
    """Logits ``[b, s, V]`` (V = padded vocabulary; rows >= ``cfg.vocab_size`` are the dtype's minimum).

    ``state``: the logical state dict of ``cfg``; ``tokens``: LongTensor ``[b, s]`` (positions 0..s-1);
    ``masks``: MSG masks (None: unmasked). Differentiable; dropout is not modelled.
    """
    layers = state[R.QKV_WEIGHT].shape[0]
    if layers != cfg.num_layers:
        raise ValueError(f"the state has {layers} layers, the config {cfg.num_layers}")
    return forward_logits(cfg, state.get, lambda i: layer_slices(state, i), tokens, masks)


def layer_slices(state: dict[str, Tensor], index: int) -> dict[str, Tensor]:
    """``{key: layer index's slice}`` of the per-layer tensors of a logical state dict."""
    return {k: v[index] for k, v in state.items() if k.startswith("decoder.layers.")}


def token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean token cross-entropy of ``logits[b, s, V]`` against ``labels[b, s]``."""
    flat = logits.reshape(-1, logits.shape[-1])
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return F.cross_entropy(flat, labels.reshape(-1))


def reference_loss(
    cfg, state: dict[str, Tensor], tokens: Tensor, labels: Tensor, masks: Optional[MaskValues] = None
) -> Tensor:
    """Mean token cross-entropy of ``reference_logits`` against ``labels[b, s]``."""
    return token_loss(reference_logits(cfg, state, tokens, masks), labels)
