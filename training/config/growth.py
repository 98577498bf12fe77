"""The growth options a plan file and a staged run's ``growth:`` section share: one spelling, one set
of defaults (docs/growth.md).

``GrowthOptions`` is embedded by ``growth.plan.GrowthPlan`` (which adds the two shapes and the target
TP size) and by a stage's ``StageGrowthConfig`` (which adds how the stage enters the LR schedule)::

    operators: {hidden: msg, depth: msg}   # per dimension; a dimension left out (or null) gets
    default_operator: msg                  #   default_operator when it grows, none when it does not
    depth: {placement: interleave, init: copy}
    ramp: {steps: 200, shape: linear}
    init_std: null                         # std of new random weights (null: the model's init_std)
    clone_noise: 0.0
    seed: 0
    exact: true

An operator is a name here; what it does to each dimension lives in ``growth/`` (``growth.axes``
for the tensor maps, ``growth.plan`` for what each name needs and whether it is exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from training.config_base import ConfigError, join_key

#: operators for a width dimension (hidden, ffn, heads): none, msg (masked structural growth: new
#: structure multiplied by a mask ramped 0 -> 1), zero (new structure whose output projections are
#: zero; no masks), clone (an integer factor by repeating: HyperCloning)
WidthOperator = Literal["none", "msg", "zero", "clone"]
#: operators for depth: none, msg, zero (new layers whose output projections are zero), stack (the
#: layer stack repeated: G_stack; never exact)
DepthOperator = Literal["none", "msg", "zero", "stack"]
#: what a dimension that grows and is not named in ``operators`` gets (depth: clone has no depth
#: counterpart, so a growing depth under ``default_operator: clone`` must be named); none: every
#: growing dimension must be named
DefaultOperator = Literal["none", "msg", "zero", "clone"]

DIMENSIONS = ("hidden", "ffn", "heads", "depth")


@dataclass
class Operators:
    """One operator per dimension; null: ``default_operator`` when that dimension grows, else none.
    After ``GrowthOptions.resolve_operators`` every field is a name, and none exactly when that
    dimension keeps its size."""

    hidden: Optional[WidthOperator] = None
    ffn: Optional[WidthOperator] = None
    #: heads and/or query groups
    heads: Optional[WidthOperator] = None
    depth: Optional[DepthOperator] = None

    def named(self, dim: str) -> str:
        """The operator of ``dim`` once resolved (``GrowthOptions.resolve_operators``)."""
        op = getattr(self, dim)
        if op is None:
            raise ValueError(f"operators.{dim} is not resolved; resolve_operators names every dimension")
        return op


@dataclass
class DepthOptions:
    #: interleave: each new layer right after the old layer it copies, spread evenly (the post-growth
    #: loss stays lowest, docs/growth.md); stack: new layers on top of the old stack
    placement: Literal["stack", "interleave"] = "interleave"
    #: copy: a new layer copies an old one (see docs/growth.md for which); fresh: random init
    init: Literal["copy", "fresh"] = "copy"


@dataclass
class RampOptions:
    #: optimizer steps over which msg masks rise from 0 to 1 (then they are removed); long enough for
    #: the new weights to adapt before they count in full (ramp 50 jumped +5.5% after growth, ramp 200
    #: did not: docs/growth.md)
    steps: int = 200
    shape: Literal["linear", "cosine"] = "linear"

    def validate(self, path: str) -> None:
        if self.steps < 0:
            raise ConfigError(join_key(path, "steps"), "must be >= 0")


@dataclass
class GrowthOptions:
    """How new structure is brought in (shapes aside); see the module docstring."""

    operators: Operators = field(default_factory=Operators)
    default_operator: DefaultOperator = "msg"
    depth: DepthOptions = field(default_factory=DepthOptions)
    ramp: RampOptions = field(default_factory=RampOptions)
    #: std of new random weights; null means the model's init_std
    init_std: Optional[float] = None
    #: std of Gaussian noise added to cloned copies (symmetry breaking; makes clone inexact)
    clone_noise: float = 0.0
    seed: int = 0
    #: refuse operators that are not function-preserving for this block variant
    exact: bool = True

    def resolve_operators(self, grows: dict[str, bool], path: str) -> Operators:
        """The operator of every dimension, given which ones grow (``DIMENSIONS`` -> bool): named ones
        as named, the others ``default_operator`` when they grow, none when they do not. A growing
        depth left to ``default_operator: clone`` is refused (no depth counterpart), naming the key."""
        out = {}
        for dim in DIMENSIONS:
            named = getattr(self.operators, dim)
            if named is None:
                named = self.default_operator if grows[dim] else "none"
                if dim == "depth" and named == "clone":
                    raise ConfigError(
                        join_key(path, "operators.depth"),
                        "the layers grow and default_operator clone has no depth counterpart; "
                        "name one: operators.depth: msg, zero or stack",
                    )
            out[dim] = named
        return Operators(**out)

    def validate(self, path: str) -> None:
        if self.init_std is not None and self.init_std <= 0:
            raise ConfigError(join_key(path, "init_std"), "must be > 0 (or null for the model's init_std)")
        if self.clone_noise < 0:
            raise ConfigError(join_key(path, "clone_noise"), "must be >= 0")
