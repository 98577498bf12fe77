"""MSG masks: their state (pure, JSON-serialisable data) and their values.

Semantics (applied to the modules by ``training.engine.model.masks``): every structure grown with ``msg`` is multiplied
by a ramp value c (1 on old structure):
- hidden: the embedding output and every norm output are multiplied by ``m`` (1 on the first
  ``hidden_old`` dims, c on the rest) and the norms' statistics are weighted by ``m``;
- ffn: new neurons' pre-activation is multiplied by c;
- heads: queries of new heads and keys/values of new query groups are multiplied by c;
- depth: a new layer computes ``h + c (Layer(h) - h)``.
c = ramp(steps_done / ramp_steps) rises from 0 (the grown model computes the old function) to 1
(the plain grown model); from then on the masks are removed (``is_done``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor


@dataclass
class MaskValues:
    """Mask tensors for one forward pass (``None``: that dimension is not masked).

    ``hidden[H]``, ``neuron[F]``, ``head[heads]``, ``group[query_groups]``: 1 on old entries, c on
    new; ``depth``: {global layer index: gate c} for the new layers.
    """

    hidden: Optional[Tensor] = None
    neuron: Optional[Tensor] = None
    head: Optional[Tensor] = None
    group: Optional[Tensor] = None
    depth: dict[int, Union[float, Tensor]] = field(default_factory=dict)


@dataclass
class MaskState:
    """Which structure is masked and where the ramp stands. Pure data; ``to_dict`` is JSON-ready.

    Invariants: ``ramp_steps >= 1``; ``hidden_old < hidden_new`` when set (same for ffn);
    ``head_is_new``/``group_is_new`` have one entry per head/query group of the grown model.
    """

    ramp_steps: int
    shape: str = "linear"
    #: optimizer steps taken since growth (the trainer advances it and saves it with checkpoints)
    steps_done: int = 0
    num_layers: int = 0
    hidden_old: Optional[int] = None
    hidden_new: Optional[int] = None
    ffn_old: Optional[int] = None
    ffn_new: Optional[int] = None
    head_is_new: Optional[list[bool]] = None
    group_is_new: Optional[list[bool]] = None
    new_layers: list[int] = field(default_factory=list)

    def value(self, step: Optional[int] = None) -> float:
        """Ramp value c after ``step`` optimizer steps (default ``steps_done``): 0 at 0, 1 from ramp_steps on."""
        t = min(max((self.steps_done if step is None else step) / self.ramp_steps, 0.0), 1.0)
        if self.shape == "cosine":
            return 0.5 - 0.5 * math.cos(math.pi * t)
        return t

    def is_done(self, step: Optional[int] = None) -> bool:
        """Whether the ramp is over after ``step`` optimizer steps (default ``steps_done``): c = 1 from
        then on and the masks are removed."""
        return (self.steps_done if step is None else step) >= self.ramp_steps

    def advanced(self, steps: int = 1) -> MaskState:
        """A copy ``steps`` optimizer steps further along the ramp (this state is left unchanged)."""
        return dataclasses.replace(self, steps_done=self.steps_done + steps)

    def values(
        self,
        step: Optional[int] = None,
        *,
        c: Union[float, Tensor, None] = None,
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> MaskValues:
        """Mask tensors at ramp value ``c`` (default: ``value(step)``). A tensor ``c`` keeps autograd."""
        c = self.value(step) if c is None else c

        def vec(is_new: list[bool]) -> Tensor:
            new = torch.tensor(is_new, device=device)
            ones = torch.ones(len(is_new), dtype=dtype, device=device)
            return torch.where(new, ones * c, ones)

        def block(old: Optional[int], new: Optional[int]) -> Optional[Tensor]:
            return None if old is None or new is None else vec([i >= old for i in range(new)])

        return MaskValues(
            hidden=block(self.hidden_old, self.hidden_new),
            neuron=block(self.ffn_old, self.ffn_new),
            head=None if self.head_is_new is None else vec(self.head_is_new),
            group=None if self.group_is_new is None else vec(self.group_is_new),
            depth={i: c for i in self.new_layers},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (checkpoint metadata); ``from_dict`` reads them back to an equal state."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskState:
        """The state ``to_dict`` wrote; ``ValueError`` naming unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown MaskState keys {unknown}; allowed: {sorted(names)}")
        return cls(**data)
