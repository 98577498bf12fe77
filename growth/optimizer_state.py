"""Adam state across growth: moments mapped like the parameters they belong to, step kept.

Moments are logical tensors with the parameters' keys and shapes. Rules (per entry of the grown
parameter):
- an entry that is new (a new row/column, a new layer - copied or fresh - or a new vocabulary row)
  starts with zero moments (as in MSG);
- an entry copied from an old one gets the old moments times the gradient scale of the map
  (``AxisMap.grad_scale``; first moment x s, second x s^2). s = 1 except where the grown model's
  gradient is a known multiple of the old one:
  clone (factor k): entries that *produce* repeated values (embedding/norm/proj/fc2 hidden rows,
  QKV rows of cloned heads, fc1 rows of cloned neurons, untied output columns) have s = 1/k for
  heads/neurons/hidden (1/k_groups for key/value rows); entries that *read* repeated values (divided
  by k) keep s = 1. Zero-init hidden growth with RMSNorm scales gains by sqrt(H/H'), so their s
  is sqrt(H'/H).
  These are the moments the grown model would have accumulated along the old gradient history.
- the step is kept (Adam's bias correction continues; new entries' first update is then
  (1 - beta1) / sqrt(1 - beta2) times the LR, in the gradient's sign).
- μP: when hidden growth multiplies the readout matrix's kept entries by ``r``
  (``growth.plan.mup_readout_scale``; the grown model computes the old function), the gradient
  with respect to those entries is the old one divided by ``r`` (chain rule through ``W' = r W``),
  so their moments are x ``1/r`` (first) and x ``1/r^2`` (second): exactly the moments a model
  parametrised as ``W'`` from the start would hold. Adam's update ``m / sqrt(v)`` is invariant to
  that scale (up to ``eps``), so the next step changes ``W'`` by what it would have changed ``W``:
  in the function, the readout's step shrinks by ``1/r``, which is μP's ``1/m`` at the new width.
  The per-group learning rates are not state: the grown stage's optimizer is built from the grown
  config (hidden matrices at ``lr / m_new``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from growth.errors import GrowthError
from growth.operators import Growth
from growth.roles import role_of
from growth.tensor_ops import gather, nonunit_product, place_old_


@dataclass(frozen=True)
class AdamState:
    """Logical Adam state: moments keyed like the parameters, and the step count."""

    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]
    step: Union[int, Tensor]


def _grow_moment_slice(g: Growth, key: str, maps, old: Tensor, order: Literal[1, 2]) -> Tensor:
    if any(bool(m.new.any()) for m in maps):
        out = place_old_(old.new_zeros(tuple(m.size for m in maps)), old, maps)
    else:
        out = gather(old, maps)
        if out is old:
            out = out.clone()
    scale = nonunit_product(maps, lambda m: m.grad_scale)
    if scale is not None:
        out.mul_((scale**order).to(out.dtype).to(out.device))
    if g.readout_scale != 1.0 and key == g.readout_key:  # μP: W' = r W, gradient / r (module docstring)
        out.mul_((1.0 / g.readout_scale) ** order)
    return out


def grow_moment_layer(
    g: Growth,
    key: str,
    j: int,
    old_layer: Optional[Tensor],
    order: Literal[1, 2],
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Layer ``j`` of the grown moment of layered parameter ``key`` (the streaming unit, as
    ``growth.operators.grow_layer``): zeros for a new layer (``old_layer`` is then ignored and may be
    None), else ``old_layer`` = the old moment's layer ``g.layers[j].source`` mapped like the parameter."""
    role = role_of(key)
    if not role.layered:
        raise GrowthError(f"{key} is not a per-layer tensor; grow its moments with grow_moment")
    src = g.layers[j]
    if src.is_new:
        return torch.zeros(g.new_shape(key)[1:], dtype=dtype if old_layer is None else old_layer.dtype)
    want = g.old_shape(key)[1:]
    if old_layer is None or tuple(old_layer.shape) != want:
        got = None if old_layer is None else tuple(old_layer.shape)
        raise GrowthError(
            f"{key}: moment of new layer {j} comes from old layer {src.source} of shape {want}; got {got}"
        )
    return _grow_moment_slice(g, key, [g.axes[a] for a in role.axes], old_layer, order)


def grow_moment(g: Growth, key: str, moment: Tensor, order: Literal[1, 2]) -> Tensor:
    """Adam moment of parameter ``key`` grown with ``g``: ``order`` 1 for exp_avg, 2 for exp_avg_sq."""
    role = g.check_old(key, moment)
    if not role.layered:
        return _grow_moment_slice(g, key, [g.axes[a] for a in role.axes], moment, order)
    out = moment.new_zeros(g.new_shape(key))
    for j, src in enumerate(g.layers):
        if not src.is_new:
            out[j] = grow_moment_layer(g, key, j, moment[src.source], order)
    return out


def grow_adam_state(g: Growth, state: AdamState) -> AdamState:
    """Every moment grown with ``grow_moment``; the step unchanged."""
    return AdamState(
        exp_avg={k: grow_moment(g, k, v, 1) for k, v in state.exp_avg.items()},
        exp_avg_sq={k: grow_moment(g, k, v, 2) for k, v in state.exp_avg_sq.items()},
        step=state.step,
    )
