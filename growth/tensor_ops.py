"""Applying ``AxisMap``s to a tensor: gather along every axis and combine per-axis vectors.

``maps[d]`` describes axis ``d`` of the tensor; per-axis vectors are broadcast to the tensor's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

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


def _indices(flag: Tensor) -> Tensor:
    return flag.nonzero().squeeze(1)


def zero_where_(out: Tensor, maps: list[AxisMap], flag: Callable[[AxisMap], Tensor]) -> Tensor:
    """In place: ``out = out.masked_fill(any_axis(maps, flag), 0)``, one axis at a time."""
    for d, m in enumerate(maps):
        f = flag(m)
        if bool(f.any()):
            out.index_fill_(d, _indices(f).to(out.device), 0)
    return out


def nonunit_product(maps: list[AxisMap], vec: Callable[[AxisMap], Tensor]) -> Optional[Tensor]:
    """float64 tensor (broadcastable to the grown shape): the product of the per-axis vectors that
    are not all ones; None when every one is. The common cases (no scaled axis, or one) never build
    a tensor-sized product."""
    out = None
    for d, m in enumerate(maps):
        v = vec(m)
        if not bool((v == 1).all()):
            view = _view(v, d, len(maps))
            out = view if out is None else out * view
    return out


def place_old_(base: Tensor, old: Tensor, maps: list[AxisMap]) -> Tensor:
    """In place: ``base[i, j, ...] = old[src0[i], src1[j], ...]`` wherever no axis is new; returns
    ``base``. Together with a ``base`` holding the new entries' values this is
    ``where(any_axis(new), base, gather(old))`` without a gathered tensor-sized copy of ``old``:
    only the kept block is gathered, and it is written through a view when the kept indices of
    every axis are contiguous (the common MSG/zero layout: old entries first)."""
    keeps = [_indices(~m.new) for m in maps]
    if any(k.numel() == 0 for k in keeps):
        return base
    block = old
    for d, (m, k) in enumerate(zip(maps, keeps)):
        src = m.src[k]
        if not torch.equal(src, torch.arange(old.shape[d])):
            block = block.index_select(d, src.to(old.device))
    dest = base
    for d, k in enumerate(keeps):
        start, n = int(k[0]), k.numel()
        if not torch.equal(k, torch.arange(start, start + n)):
            index = tuple(_view(kk, dd, len(keeps)).to(base.device) for dd, kk in enumerate(keeps))
            return base.index_put_(index, block)
        dest = dest.narrow(d, start, n)
    dest.copy_(block)
    return base


def scale_kept_(out: Tensor, maps: list[AxisMap], factor: float) -> Tensor:
    """In place: ``out`` times ``factor`` wherever no axis is new (the entries that come from the old
    tensor); returns ``out``. Through views when the kept indices of every axis are contiguous (old
    entries first, as msg/zero lay them out), else with a broadcast mask."""
    keeps = [_indices(~m.new) for m in maps]
    if any(k.numel() == 0 for k in keeps):
        return out
    view = out
    for d, k in enumerate(keeps):
        start, n = int(k[0]), k.numel()
        if not torch.equal(k, torch.arange(start, start + n)):
            kept = ~any_axis(maps, lambda m: m.new).to(out.device)
            one = torch.ones((), dtype=out.dtype, device=out.device)
            return out.mul_(torch.where(kept, one * factor, one))
        view = view.narrow(d, start, n)
    view.mul_(factor)
    return out
