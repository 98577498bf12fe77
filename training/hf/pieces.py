"""What an exported tensor is made of: :class:`Piece`, a function of one logical tensor.

Every tensor of every export architecture (:mod:`training.hf.architectures`,
:mod:`training.hf.flm_arch`) depends on one logical tensor only (one layer of it for the per-layer
tensors: a slice, a split of fused rows, a reordering, or zeros of its row count), so an export
reads, folds and converts one tensor at a time (:mod:`training.hf.export`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from torch import Tensor


def same(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class Piece:
    """One exported tensor: ``fn`` of the export-state tensor of logical ``key`` (of layer ``layer``
    for the per-layer tensors, None for the others). A mapping lists the pieces of one source
    together, so an export that keeps the last source it read reads each source once."""

    key: str
    layer: Optional[int] = None
    fn: Callable[[Tensor], Tensor] = same
