"""The export state, one tensor at a time: the vocabulary trimmed and the muP multipliers folded.

The project model computes ``x0 = E[t]·μ_in`` and ``logits = norm_f(x)·Wᵀ·μ_out`` (``W = E`` when
tied) and forces the padded rows ``vocab_size ..`` to the dtype's minimum. A transformers model has
neither multipliers nor padded rows, so the export state is, with ``V = vocab_size``:

- ``E' = μ_in·E[:V]``;
- untied: ``W' = μ_out·W[:V]``;
- tied with ``μ_in == μ_out``: nothing else (``E'`` already carries the factor);
- tied with ``μ_in != μ_out``: the final norm's gain and bias times ``μ_out/μ_in``, because
  ``(n·g·s + b·s)·(μ_in·E)ᵀ = μ_out·(n·g + b)·Eᵀ`` for ``s = μ_out/μ_in``.

All of these are exact in exact arithmetic (products are formed in float64 and rounded once to the
export dtype). Refused: non-finite multipliers, and ``μ_in = 0`` with tied embeddings and
``μ_out != 0`` (the output would need ``E``, which ``E' = 0`` no longer holds).

μP (``model.mup``, docs/mup.md) is folded the same way, for every architecture (FLM's included), so
an export is a standard-parametrisation model with the same logits: ``μ_out`` above is the readout
multiplier ``output_multiplier / m``, and the attention scale ``attention_multiplier / d`` becomes the
architectures' ``1 / sqrt(d)`` by multiplying the query rows of the fused QKV weight and bias by
``attention_multiplier / sqrt(d)`` (RoPE and xPos are linear in the query, so the scores are
``attention_multiplier * q.k / d`` again).

Memory: :class:`Fold` applies this to one logical tensor (or one layer of a per-layer tensor) at a
time; a scaled tensor is computed in float64 in blocks of :data:`BLOCK_ELEMENTS` elements, so a fold
holds its input, its output and one float64 block, never a float64 copy of a tensor or the model.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
from torch import Tensor

from growth import roles as R
from training.hf.errors import HFInteropError

#: elements per float64 block of a scaled tensor (32 MiB)
BLOCK_ELEMENTS = 1 << 22

#: a scalar factor, or one factor per row (dim 0) of the tensor
Factor = Union[float, Tensor]


class Fold:
    """How each logical tensor becomes its export tensor (see the module docstring).

    ``fold=False`` (the FLM architecture, which applies the multipliers itself): trim the padded
    vocabulary rows and fold μP's attention scale only. ``rows``: the embedding's rows in the
    checkpoint (the padded vocabulary). ``record`` is what was folded, JSON-ready. Raises
    HFInteropError for what cannot be folded exactly."""

    def __init__(self, cfg, rows: int, dtype: torch.dtype, fold: bool = True) -> None:
        m_in, m_out = float(cfg.input_multiplier), float(cfg.readout_multiplier)  # readout: output_multiplier (/ m)
        if not (math.isfinite(m_in) and math.isfinite(m_out)):
            raise HFInteropError(
                f"model.input_multiplier={m_in} / output_multiplier={m_out} are not finite; nothing can be exported"
            )
        vocab = cfg.vocab_size
        if rows < vocab:
            raise HFInteropError(
                f"the embedding has {rows} rows but model.vocab_size is {vocab}; the checkpoint and its config disagree"
            )
        self.dtype = dtype
        self.vocab = vocab
        self._factors: dict[str, Factor] = {}
        mup = _mup_record(cfg)
        self.record: dict[str, Any] = {
            "input_multiplier": m_in,
            "output_multiplier": m_out,
            "padded_rows_dropped": rows - vocab,
        }
        if mup:
            query = _query_rows(cfg)
            self._factors[R.QKV_WEIGHT] = self._factors[R.QKV_BIAS] = query
        if not fold:
            self.record["multipliers"] = "kept in config.json (the model applies them)"
            self.record.update(mup)
            return
        self._factors[R.EMBEDDING] = m_in
        self.record["embedding_scaled_by"] = m_in
        self.record.update(mup)
        if not cfg.tie_embeddings:
            self._factors[R.OUTPUT] = m_out
            self.record["output_layer_scaled_by"] = m_out
        elif m_out != m_in:
            if m_in == 0.0:
                raise HFInteropError(
                    "model.input_multiplier is 0 with tied embeddings and output_multiplier "
                    f"{m_out}: the exported tied matrix would be 0 and the output layer would lose E; "
                    "this cannot be folded exactly, so the export is refused"
                )
            scale = m_out / m_in
            self._factors[R.FINAL_NORM_WEIGHT] = self._factors[R.FINAL_NORM_BIAS] = scale
            self.record["final_norm_scaled_by"] = scale

    def shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The export shape of a tensor of logical ``key`` stored with ``shape`` (vocabulary rows trimmed)."""
        return (self.vocab, *shape[1:]) if key in (R.EMBEDDING, R.OUTPUT) else shape

    def __call__(self, key: str, t: Tensor) -> Tensor:
        """The export tensor (in the export dtype) of ``t``: logical tensor ``key``, or one layer of it."""
        if key in (R.EMBEDDING, R.OUTPUT):
            t = t[: self.vocab]
        factor = self._factors.get(key)
        return t.to(self.dtype) if factor is None else scaled(t, factor, self.dtype)


def scaled(t: Tensor, factor: Factor, dtype: torch.dtype) -> Tensor:
    """``t · factor`` formed in float64 and rounded once to ``dtype``; a tensor ``factor`` scales the
    rows (dim 0). Computed in blocks of rows (about :data:`BLOCK_ELEMENTS` float64 elements each)."""
    out = torch.empty(t.shape, dtype=dtype)
    if t.dim() == 0 or t.numel() == 0:
        out.copy_(t.to(torch.float64) * (factor if isinstance(factor, float) else factor.reshape(())))
        return out
    per_row = max(1, t[0].numel())
    step = max(1, BLOCK_ELEMENTS // per_row)
    for start in range(0, t.shape[0], step):
        block = t[start : start + step].to(torch.float64)
        if isinstance(factor, float):
            block.mul_(factor)
        else:
            block.mul_(factor[start : start + step].reshape(-1, *([1] * (t.dim() - 1))))
        out[start : start + step] = block
    return out


def _mup_record(cfg) -> dict[str, Any]:
    """What μP folding records (empty under the standard parametrisation)."""
    if cfg.mup is None:
        return {}
    return {
        "mup": {"base_width": cfg.mup.base_width, "attention_multiplier": cfg.mup.attention_multiplier},
        "width_multiplier": cfg.width_multiplier,
        "readout_multiplier": cfg.readout_multiplier,
        "query_scaled_by": cfg.attention_scale * math.sqrt(cfg.head_dim),
    }


def _query_rows(cfg) -> Tensor:
    """μP: the factor of each fused QKV row (per group ``[q heads, k, v]``): ``attention_multiplier /
    sqrt(d)`` for query rows, 1 for key and value rows (float64)."""
    ng, d = cfg.query_groups, cfg.head_dim
    r = cfg.num_attention_heads // ng
    rows = torch.ones(ng, r + 2, d, dtype=torch.float64)
    rows[:, :r] = cfg.attention_scale * math.sqrt(d)
    return rows.reshape(-1)
