"""Index maps: how each axis kind of the logical tensors grows under each operator.

An ``AxisMap`` turns an axis of the old size into one of the new size:

- ``src[i]``: the old index copied to new index ``i``, or -1 for a new entry (initialised by the
  tensor's fill rule);
- ``scale[i]``: multiplies the value at new index ``i`` (clone divides the copies of a *reading*
  axis by the clone factor so that the repeated inputs sum back to the old value);
- ``grad_scale[i]``: how the gradient at ``i`` relates to the old gradient at ``src[i]`` when the
  grown model computes the old function: first Adam moments are multiplied by it, second moments
  by its square (see ``growth.optimizer_state``);
- ``zero_new``: new entries must be zero for the operator to be exact (zero-init output axes);
- ``copy[i]``: entry ``i`` is a clone other than the first copy (where clone noise goes).

``head_maps``/``hidden_maps``/``ffn_maps``/``vocab_map`` build them; ``layer_sources`` is the
same for the layer (depth) axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from growth.shape import ModelShape


@dataclass(frozen=True)
class AxisMap:
    """How one axis of old size n grows to new size n' (module docstring: the meaning of each field).

    Invariants: ``src`` (int64), ``scale`` and ``grad_scale`` (float64) and ``copy`` (bool) are 1-D
    of length n'; ``src[i]`` is an old index in ``0 .. n-1`` or -1 (new); ``copy[i]`` implies
    ``src[i] >= 0``. Immutable.
    """

    src: Tensor
    scale: Tensor
    grad_scale: Tensor
    zero_new: bool
    copy: Tensor

    @property
    def new(self) -> Tensor:
        """bool[n']: the entries that are new (``src < 0``)."""
        return self.src < 0

    @property
    def size(self) -> int:
        """n', the grown size of the axis."""
        return self.src.shape[0]

    @property
    def is_identity(self) -> bool:
        """Whether the map leaves the axis as it is: same size, ``src = 0 .. n-1``, scales all 1."""
        n = self.size
        return (
            bool(torch.equal(self.src, torch.arange(n)))
            and bool((self.scale == 1).all())
            and bool((self.grad_scale == 1).all())
        )


def _ones(n: int) -> Tensor:
    return torch.ones(n, dtype=torch.float64)


def _axis(
    src: Tensor, *, scale: float = 1.0, grad_scale: float = 1.0, zero_new: bool = False, copy: Optional[Tensor] = None
) -> AxisMap:
    n = src.shape[0]
    return AxisMap(
        src=src.long(),
        scale=_ones(n) * scale,
        grad_scale=_ones(n) * grad_scale,
        zero_new=zero_new,
        copy=torch.zeros(n, dtype=torch.bool) if copy is None else copy,
    )


def identity(n: int) -> AxisMap:
    """The map of an axis of size ``n`` that does not grow (``AxisMap.is_identity``)."""
    return _axis(torch.arange(n))


def leading(n_old: int, n_new: int, *, zero_new: bool = False, scale: float = 1.0) -> AxisMap:
    """Old entries in the leading block, new ones after."""
    src = torch.cat([torch.arange(n_old), torch.full((n_new - n_old,), -1)])
    return _axis(src, zero_new=zero_new, scale=scale, grad_scale=1.0 / scale)


def tiled(n_old: int, n_new: int, *, reads: bool) -> AxisMap:
    """Clone: new index i copies old index i mod n_old (the old vector repeated k = n_new/n_old times).

    ``reads``: the axis is summed over against a repeated input (weights divided by k, gradients
    unchanged); otherwise it produces repeated outputs (weights kept, gradients divided by k,
    because every consumer reads each copy with weight 1/k).
    """
    k = n_new // n_old
    idx = torch.arange(n_new)
    return _axis(idx % n_old, scale=1.0 / k if reads else 1.0, grad_scale=1.0 if reads else 1.0 / k, copy=idx >= n_old)


def _concat(maps: list[AxisMap], offsets: list[int]) -> AxisMap:
    """Maps of consecutive blocks of one axis (old block j starts at ``offsets[j]``)."""
    src = torch.cat([torch.where(m.src < 0, m.src, m.src + off) for m, off in zip(maps, offsets)])
    return AxisMap(
        src=src,
        scale=torch.cat([m.scale for m in maps]),
        grad_scale=torch.cat([m.grad_scale for m in maps]),
        zero_new=maps[0].zero_new,
        copy=torch.cat([m.copy for m in maps]),
    )


def vocab_map(old: int, new: int) -> AxisMap:
    """Padding rows are never used (their logits are forced to the dtype's minimum); new ones are 0."""
    return leading(old, new, zero_new=True)


def hidden_maps(op: str, old: int, new: int, rms: bool) -> dict[str, AxisMap]:
    """The four hidden axis kinds (``hidden_out``, ``hidden_in``, ``hidden_logit``, ``hidden_norm``),
    each of size ``old`` -> ``new``, under width operator ``op`` (none/msg/zero/clone; clone needs
    ``new % old == 0``); ``rms``: the model uses RMSNorm (zero growth rescales the norm gains then).
    ``ValueError`` for an unknown operator."""
    if op == "none":
        return {k: identity(old) for k in ("hidden_out", "hidden_in", "hidden_logit", "hidden_norm")}
    if op == "msg":
        return {k: leading(old, new) for k in ("hidden_out", "hidden_in", "hidden_logit", "hidden_norm")}
    if op == "zero":
        # New residual dims must stay 0: everything that writes them starts at 0. RMSNorm then sees
        # mean(x^2) shrunk by H/H'; gains x sqrt(H/H') (with eps x H/H', see plan.new_model_config)
        # restore the output exactly. For LayerNorm no rescaling helps (inexact, refused unless asked).
        gain = math.sqrt(old / new) if rms else 1.0
        return {
            "hidden_out": leading(old, new, zero_new=True),
            "hidden_in": leading(old, new),
            "hidden_logit": leading(old, new),
            "hidden_norm": leading(old, new, scale=gain),
        }
    if op == "clone":
        return {
            "hidden_out": tiled(old, new, reads=False),
            "hidden_in": tiled(old, new, reads=True),
            # the output multiplier is divided by k instead of the weights (plan.new_model_config)
            "hidden_logit": tiled(old, new, reads=False),
            "hidden_norm": tiled(old, new, reads=False),
        }
    raise ValueError(f"hidden operator {op!r}")


def ffn_maps(op: str, old: int, new: int, swiglu: bool) -> dict[str, AxisMap]:
    """``ffn_in`` (size ``old`` -> ``new``) and ``ffn_out`` (the fc1 rows: the same, or twice that with
    ``swiglu``, gate and up halves grown alike) under width operator ``op``. ``ValueError`` for an
    unknown operator."""
    halves = 2 if swiglu else 1
    if op == "none":
        return {"ffn_out": identity(old * halves), "ffn_in": identity(old)}
    if op in ("msg", "zero"):
        out = _concat([leading(old, new)] * halves, [h * old for h in range(halves)])
        return {"ffn_out": out, "ffn_in": leading(old, new, zero_new=op == "zero")}
    if op == "clone":
        out = _concat([tiled(old, new, reads=False)] * halves, [h * old for h in range(halves)])
        return {"ffn_out": out, "ffn_in": tiled(old, new, reads=True)}
    raise ValueError(f"ffn operator {op!r}")


@dataclass(frozen=True)
class HeadLayout:
    """Which old head / group each new head / group comes from (-1: new)."""

    head_src: list[int]
    group_src: list[int]

    @property
    def head_is_new(self) -> list[bool]:
        """One entry per new head: True where it has no old head (MSG masks it)."""
        return [s < 0 for s in self.head_src]

    @property
    def group_is_new(self) -> list[bool]:
        """One entry per new query group: True where it has no old group (MSG masks its keys/values)."""
        return [s < 0 for s in self.group_src]


def head_layout(op: str, old: ModelShape, new: ModelShape) -> HeadLayout:
    """msg/zero: old group g stays group g with its old heads first; clone: (g, i) <- (g mod ng, i mod r)."""
    r, r_new = old.heads_per_group, new.heads_per_group
    heads, groups = [], []
    for g in range(new.query_groups):
        if op == "clone":
            og = g % old.query_groups
        else:
            og = g if g < old.query_groups else -1
        groups.append(og)
        for i in range(r_new):
            if op == "clone":
                heads.append(og * r + i % r)
            else:
                heads.append(og * r + i if og >= 0 and i < r else -1)
    return HeadLayout(heads, groups)


def head_maps(op: str, old: ModelShape, new: ModelShape) -> dict[str, AxisMap]:
    """``qkv`` (the fused QKV rows, ``ModelShape.qkv_rows`` of each shape) and ``proj_in`` (the output
    projection's columns, heads x head_dim) for heads/query groups grown by ``op`` following
    ``head_layout``; the head dim never changes. Clone divides ``proj_in`` by the head factor and
    the gradients of repeated heads/groups by their factors."""
    d, r, r_new = old.head_dim, old.heads_per_group, new.heads_per_group
    if op == "none":
        return {"qkv": identity(old.qkv_rows), "proj_in": identity(old.heads * d)}
    layout = head_layout(op, old, new)
    k_heads = new.heads // old.heads if op == "clone" else 1
    k_groups = new.query_groups // old.query_groups if op == "clone" else 1
    dims = torch.arange(d)
    seen_heads: set[int] = set()
    seen_groups: set[int] = set()
    qkv_src, qkv_grad, qkv_copy = [], [], []
    for g in range(new.query_groups):
        og = layout.group_src[g]
        for i in range(r_new):
            oh = layout.head_src[g * r_new + i]
            qkv_src.append(og * (r + 2) * d + (oh - og * r) * d + dims if oh >= 0 else torch.full((d,), -1))
            qkv_grad.append(torch.full((d,), 1.0 / k_heads, dtype=torch.float64))
            qkv_copy.append(torch.full((d,), oh >= 0 and oh in seen_heads))
            seen_heads.add(oh)
        for slot in (r, r + 1):  # key, value
            qkv_src.append(og * (r + 2) * d + slot * d + dims if og >= 0 else torch.full((d,), -1))
            qkv_grad.append(torch.full((d,), 1.0 / k_groups, dtype=torch.float64))
            qkv_copy.append(torch.full((d,), og >= 0 and og in seen_groups))
        seen_groups.add(og)
    qkv = AxisMap(
        src=torch.cat(qkv_src).long(),
        scale=_ones(new.qkv_rows),
        grad_scale=torch.cat(qkv_grad),
        zero_new=False,
        copy=torch.cat(qkv_copy),
    )
    proj_src = torch.cat([oh * d + dims if oh >= 0 else torch.full((d,), -1) for oh in layout.head_src])
    proj = _axis(proj_src, scale=1.0 / k_heads, zero_new=op == "zero", copy=_head_copies(layout, d))
    return {"qkv": qkv, "proj_in": proj}


def _head_copies(layout: HeadLayout, d: int) -> Tensor:
    """Per proj column: the head is a clone other than its first copy."""
    seen: set[int] = set()
    out = []
    for oh in layout.head_src:
        out.append(torch.full((d,), oh >= 0 and oh in seen))
        seen.add(oh)
    return torch.cat(out)


@dataclass(frozen=True)
class LayerSource:
    """Where new layer ``j`` comes from.

    ``source``: the old layer copied (after width growth), or None for a fresh random layer;
    ``is_new``: not one of the old layers (msg gates it; its Adam moments start at zero);
    ``zero_output``: its output projections are zeroed (zero-init: the layer is the identity).
    """

    source: Optional[int]
    is_new: bool
    zero_output: bool = False


def _interleave_counts(old: int, added: int) -> list[int]:
    """New layers inserted after each old layer, spread evenly (the last old layer always gets one)."""
    return [(i + 1) * added // old - i * added // old for i in range(old)]


def layer_sources(op: str, placement: str, init: str, old: int, new: int) -> list[LayerSource]:
    """The new layer stack. msg/zero stack: old layers, then new layer L + j copies old layer j mod L;
    interleave: each old layer i is followed by its copies. stack (G_stack): the whole stack repeated
    (placement stack) or every layer repeated in place (interleave); the first occurrence is the old one."""
    if op == "none":
        return [LayerSource(i, False) for i in range(old)]
    if op == "stack":
        g = new // old
        if placement == "stack":
            return [LayerSource(j % old, j >= old) for j in range(new)]
        return [LayerSource(i, c > 0) for i in range(old) for c in range(g)]
    zero = op == "zero"

    def added_layer(i: int) -> LayerSource:
        return LayerSource(i if init == "copy" else None, True, zero)

    if placement == "stack":
        return [LayerSource(i, False) for i in range(old)] + [added_layer(j % old) for j in range(new - old)]
    out = []
    for i, count in enumerate(_interleave_counts(old, new - old)):
        out.append(LayerSource(i, False))
        out.extend(added_layer(i) for _ in range(count))
    return out
