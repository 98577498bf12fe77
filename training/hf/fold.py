"""The export state: the logical state with the vocabulary trimmed and the muP multipliers folded.

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
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from growth import roles as R
from training.hf.errors import HFInteropError


def export_state(
    cfg, state: dict[str, Tensor], dtype: torch.dtype, fold: bool = True
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(export state in ``dtype``, a JSON-ready record of what was folded). ``state`` is unchanged.
    ``fold=False`` (the FLM architecture, which applies the multipliers itself): trim the padded
    vocabulary rows only."""
    m_in, m_out = float(cfg.input_multiplier), float(cfg.readout_multiplier)  # readout: output_multiplier (/ m)
    if not (math.isfinite(m_in) and math.isfinite(m_out)):
        raise HFInteropError(
            f"model.input_multiplier={m_in} / output_multiplier={m_out} are not finite; nothing can be exported"
        )
    mup = _mup_record(cfg)
    vocab = cfg.vocab_size
    rows = state[R.EMBEDDING].shape[0]
    if rows < vocab:
        raise HFInteropError(
            f"the embedding has {rows} rows but model.vocab_size is {vocab}; the checkpoint and its config disagree"
        )
    if not fold:
        out = dict(state)
        out[R.EMBEDDING] = state[R.EMBEDDING][:vocab]
        if not cfg.tie_embeddings:
            out[R.OUTPUT] = state[R.OUTPUT][:vocab]
        if mup:
            _fold_attention_scale(cfg, out)
        return (
            {k: v.to(dtype) for k, v in out.items()},
            {
                "input_multiplier": m_in,
                "output_multiplier": m_out,
                "padded_rows_dropped": rows - vocab,
                "multipliers": "kept in config.json (the model applies them)",
                **mup,
            },
        )
    out = {k: v.to(torch.float64) for k, v in state.items()}
    out[R.EMBEDDING] = out[R.EMBEDDING][:vocab] * m_in
    if mup:
        _fold_attention_scale(cfg, out)
    record: dict[str, Any] = {
        "input_multiplier": m_in,
        "output_multiplier": m_out,
        "padded_rows_dropped": rows - vocab,
        "embedding_scaled_by": m_in,
        **mup,
    }
    if not cfg.tie_embeddings:
        out[R.OUTPUT] = out[R.OUTPUT][:vocab] * m_out
        record["output_layer_scaled_by"] = m_out
    elif m_out != m_in:
        if m_in == 0.0:
            raise HFInteropError(
                "model.input_multiplier is 0 with tied embeddings and output_multiplier "
                f"{m_out}: the exported tied matrix would be 0 and the output layer would lose E; "
                "this cannot be folded exactly, so the export is refused"
            )
        scale = m_out / m_in
        out[R.FINAL_NORM_WEIGHT] = out[R.FINAL_NORM_WEIGHT] * scale
        if R.FINAL_NORM_BIAS in out:
            out[R.FINAL_NORM_BIAS] = out[R.FINAL_NORM_BIAS] * scale
        record["final_norm_scaled_by"] = scale
    return {k: v.to(dtype) for k, v in out.items()}, record


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


def _fold_attention_scale(cfg, state: dict[str, Tensor]) -> None:
    """μP: the query rows of the fused QKV weight and bias (per group ``[q heads, k, v]``) times
    ``attention_multiplier / sqrt(d)`` (formed in float64), in ``state`` (new tensors, same dtype)."""
    ng, d = cfg.query_groups, cfg.head_dim
    r = cfg.num_attention_heads // ng
    rows = torch.ones(ng, r + 2, d, dtype=torch.float64)
    rows[:, :r] = cfg.attention_scale * math.sqrt(d)
    rows = rows.reshape(-1)
    for key, view in ((R.QKV_WEIGHT, rows[None, :, None]), (R.QKV_BIAS, rows[None, :])):
        if key in state:
            t = state[key]
            state[key] = (t.to(torch.float64) * view).to(t.dtype)
