"""Applying ``AxisMap``s to a tensor: gather along every axis and combine per-axis vectors.

``maps[d]`` describes axis ``d`` of the tensor; per-axis vectors are broadcast to the tensor's shape.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from growth.axes import AxisMap


def _view(vec: Tensor, dim: int, ndim: int) -> Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return vec.view(shape)


def gather(tensor: Tensor, maps: list[AxisMap]) -> Tensor:
    """``out[i, j, ...] = tensor[src0[i], src1[j], ...]`` (new entries read index 0; mask them after)."""
    for d, m in enumerate(maps):
        if not m.is_identity:
            tensor = tensor.index_select(d, m.src.clamp(min=0).to(tensor.device))
    return tensor


def any_axis(maps: list[AxisMap], flag: Callable[[AxisMap], Tensor]) -> Tensor:
    """Boolean tensor (broadcastable to the grown shape): ``flag`` holds along at least one axis."""
    out = torch.zeros((), dtype=torch.bool)
    for d, m in enumerate(maps):
        out = out | _view(flag(m), d, len(maps))
    return out


def axis_product(maps: list[AxisMap], vec: Callable[[AxisMap], Tensor]) -> Tensor:
    """float64 tensor (broadcastable to the grown shape): the product of the per-axis vectors."""
    out = torch.ones((), dtype=torch.float64)
    for d, m in enumerate(maps):
        out = out * _view(vec(m), d, len(maps))
    return out
