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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from torch import Tensor

from growth.operators import Growth
from growth.tensor_ops import any_axis, axis_product, gather


@dataclass(frozen=True)
class AdamState:
    """Logical Adam state: moments keyed like the parameters, and the step count."""

    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]
    step: Union[int, Tensor]


def grow_moment(g: Growth, key: str, moment: Tensor, order: Literal[1, 2]) -> Tensor:
    """Adam moment of parameter ``key`` grown with ``g``: ``order`` 1 for exp_avg, 2 for exp_avg_sq."""
    role = g.check_old(key, moment)
    maps = [g.axes[a] for a in role.axes]

    def grow_slice(old: Tensor) -> Tensor:
        out = gather(old, maps).masked_fill(any_axis(maps, lambda m: m.new).to(old.device), 0)
        scale = axis_product(maps, lambda m: m.grad_scale) ** order
        return out if bool((scale == 1).all()) else out * scale.to(out.dtype).to(out.device)

    if not role.layered:
        return grow_slice(moment)
    out = moment.new_zeros(g.new_shape(key))
    for j, src in enumerate(g.layers):
        if not src.is_new:
            out[j] = grow_slice(moment[src.source])
    return out


def grow_adam_state(g: Growth, state: AdamState) -> AdamState:
    """Every moment grown with ``grow_moment``; the step unchanged."""
    return AdamState(
        exp_avg={k: grow_moment(g, k, v, 1) for k, v in state.exp_avg.items()},
        exp_avg_sq={k: grow_moment(g, k, v, 2) for k, v in state.exp_avg_sq.items()},
        step=state.step,
    )
