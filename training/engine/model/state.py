"""Convert between a single-process (TP = PP = 1) megatron ``GPTModel`` and a logical state dict.

``logical_state_dict(chunk)`` / ``load_logical_state_dict(chunk, state)``: the keys and stacked
shapes are those of ``growth.roles`` (megatron's dist-checkpoint keys, layers stacked on dim 0), so
``growth.reference`` and the megatron model can be checked against each other. Sharded models go
through dist checkpoints (``training.engine.megatron_checkpoint``).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

# megatron module-tree names of per-layer tensors -> logical names (the Transformer-Engine style names
# under which the layer spec stores its norms, see training/engine/model/spec.py)
_LAYER_RENAMES = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}
_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _logical_layer_key(rest: str) -> str:
    for old, new in _LAYER_RENAMES.items():
        if rest.startswith(old):
            return "decoder.layers." + new + rest[len(old) :]
    return "decoder.layers." + rest


def _module_tensors(chunk) -> dict[str, Tensor]:
    config = getattr(chunk, "config", None)
    tp = getattr(config, "tensor_model_parallel_size", 1)
    pp = getattr(config, "pipeline_model_parallel_size", 1)
    if tp != 1 or pp != 1:
        raise ValueError(
            f"logical state dicts convert single-process models only (TP = PP = 1), not tp={tp} pp={pp}; "
            "use megatron dist_checkpointing for sharded models"
        )
    return {
        k: v
        for k, v in chunk.state_dict(keep_vars=True).items()
        if not k.endswith("_extra_state") and isinstance(v, Tensor)
    }


def logical_state_dict(chunk) -> dict[str, Tensor]:
    """The logical state dict (detached copies) of a single-process (TP = PP = 1) ``GPTModel``."""
    layers: dict[str, dict[int, Tensor]] = {}
    out: dict[str, Tensor] = {}
    for key, value in _module_tensors(chunk).items():
        match = _LAYER_KEY.match(key)
        if match:
            layers.setdefault(_logical_layer_key(match.group(2)), {})[int(match.group(1))] = value.detach()
        else:
            out[key] = value.detach().clone()
    for key, per_layer in layers.items():
        out[key] = torch.stack([per_layer[i] for i in range(len(per_layer))])
    return out


def load_logical_state_dict(chunk, state: dict[str, Tensor]) -> None:
    """Copy a logical state dict into a single-process ``GPTModel`` (in place; strict keys and shapes)."""
    targets = _module_tensors(chunk)
    num_layers = len({m.group(1) for m in map(_LAYER_KEY.match, targets) if m})
    for key, value in state.items():
        if key.startswith("decoder.layers.") and value.shape[0] != num_layers:
            raise ValueError(f"{key}: {value.shape[0]} layers, the model has {num_layers}")
    used: set[str] = set()
    with torch.no_grad():
        for key, param in targets.items():
            match = _LAYER_KEY.match(key)
            logical = _logical_layer_key(match.group(2)) if match else key
            if logical not in state:
                raise KeyError(f"logical state dict has no {logical!r} (needed for {key})")
            src = state[logical][int(match.group(1))] if match else state[logical]
            if tuple(src.shape) != tuple(param.shape):
                raise ValueError(f"{logical}: shape {tuple(src.shape)} does not fit {key} {tuple(param.shape)}")
            param.copy_(src)
            used.add(logical)
    unused = sorted(set(state) - used)
    if unused:
        raise KeyError(f"logical state dict has tensors the model does not: {unused}")
