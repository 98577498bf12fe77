"""Model growth: grow a trained decoder LM's width and depth with function-preserving operators.

Pure functions on *logical* tensors (unsharded, layers stacked on dim 0; see ``growth.roles``):

- ``ModelShape`` / ``GrowthPlan`` (``load_plan``, ``check_plan``): what to grow and how;
- ``prepare_growth`` -> ``Growth``; ``grow_layer`` (one layer of one tensor: the streaming unit of
  ``flm grow``), ``grow_tensor`` (one tensor) and ``grow_state`` (a state dict);
- ``MaskState`` / ``MaskValues``: MSG masks and their ramp (applied to modules by ``training.engine.model.masks``);
- ``reference``: the plain-torch forward of the decoder on logical tensors (what ``verify`` runs);
- ``grow_moment_layer`` / ``grow_moment`` / ``grow_adam_state``: Adam moments across growth;
- ``verify`` / ``verify_weights``: same batch before and after growth (in memory / layer by layer).

docs/growth.md describes every operator, when it is exact, the masks and the optimizer rules.
"""

from growth.errors import GrowthError
from growth.masks import MaskState, MaskValues
from growth.operators import Growth, GrowthResult, grow_layer, grow_state, grow_tensor, prepare_growth
from growth.optimizer_state import AdamState, grow_adam_state, grow_moment, grow_moment_layer
from growth.plan import (
    GrowthPlan,
    check_plan,
    derived_fields,
    inexact_reasons,
    load_plan,
    mup_readout_scale,
    new_model_config,
    plan_for,
)
from growth.roles import logical_keys, logical_shapes
from growth.shape import ModelShape
from growth.verify import VerifyReport, verify, verify_weights

__all__ = [
    "AdamState",
    "Growth",
    "GrowthError",
    "GrowthPlan",
    "GrowthResult",
    "MaskState",
    "MaskValues",
    "ModelShape",
    "VerifyReport",
    "check_plan",
    "derived_fields",
    "grow_adam_state",
    "grow_layer",
    "grow_moment",
    "grow_moment_layer",
    "grow_state",
    "grow_tensor",
    "inexact_reasons",
    "load_plan",
    "logical_keys",
    "logical_shapes",
    "mup_readout_scale",
    "new_model_config",
    "plan_for",
    "prepare_growth",
    "verify",
    "verify_weights",
]
