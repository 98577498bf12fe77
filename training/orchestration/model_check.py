"""A checkpoint loads only into the model it was saved with: ``check_same_model``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from training.checkpoint import CheckpointError
from training.config import ModelConfig
from training.config_base import from_dict


def check_same_model(ckpt_model: dict, model: ModelConfig, ckpt_path: Path) -> None:
    """Refuse to load a checkpoint whose model differs from ``model`` in any field that defines the
    function of the weights (``ModelConfig.function_fields``: shapes, block variant, multipliers,
    eps, position encoding); CheckpointError names the first such field."""
    ours = model.function_values()
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    saved = from_dict(ModelConfig, {k: v for k, v in ckpt_model.items() if k in known}).function_values()
    for key in ModelConfig.function_fields():
        theirs = saved[key]
        if theirs != ours.get(key):
            raise CheckpointError(
                f"checkpoint {ckpt_path} has model.{key}={theirs!r} but the config says {ours.get(key)!r}; "
                "use the checkpoint's model config (flm grow changes shapes and derived fields such as "
                "output_multiplier and norm_eps: take them from its flm_checkpoint.json)"
            )
