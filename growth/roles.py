"""The logical state dict: tensor keys, what each axis of each tensor means, expected shapes.

The logical state dict is what ``training.checkpoint.logical.read_logical`` reads from a checkpoint of
any layout (the tensors megatron's ``dist_checkpointing.load_plain_tensors`` would return for this
project's model): unsharded tensors, the layers stacked on dim 0. Growth works per axis, so
every tensor is described by the *kind* of each of its (per-layer) axes:

- ``vocab``: embedding / output rows (padded vocabulary).
- ``hidden_out``: an axis that writes into the residual stream (embedding columns, attention
  output projection rows, fc2 rows and their biases).
- ``hidden_in``: an axis that reads the normalised residual stream (QKV and fc1 columns).
- ``hidden_logit``: the hidden axis of the untied output layer.
- ``hidden_norm``: norm gains and biases.
- ``qkv``: fused QKV rows (per query group: its query heads, then key, then value; ``head_dim`` each).
- ``proj_in``: attention output projection columns (``heads * head_dim``, head-major).
- ``ffn_out``: fc1 rows (GELU: ``ffn``; SwiGLU: ``[gate (ffn); up (ffn)]``).
- ``ffn_in``: fc2 columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from growth.errors import GrowthError
from growth.shape import ModelShape
from training.config import ModelConfig

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
FINAL_NORM_WEIGHT = "decoder.final_layernorm.weight"
FINAL_NORM_BIAS = "decoder.final_layernorm.bias"
_L = "decoder.layers."
NORM1_WEIGHT = _L + "self_attention.linear_qkv.layer_norm_weight"
NORM1_BIAS = _L + "self_attention.linear_qkv.layer_norm_bias"
QKV_WEIGHT = _L + "self_attention.linear_qkv.weight"
QKV_BIAS = _L + "self_attention.linear_qkv.bias"
PROJ_WEIGHT = _L + "self_attention.linear_proj.weight"
PROJ_BIAS = _L + "self_attention.linear_proj.bias"
NORM2_WEIGHT = _L + "mlp.linear_fc1.layer_norm_weight"
NORM2_BIAS = _L + "mlp.linear_fc1.layer_norm_bias"
FC1_WEIGHT = _L + "mlp.linear_fc1.weight"
FC1_BIAS = _L + "mlp.linear_fc1.bias"
FC2_WEIGHT = _L + "mlp.linear_fc2.weight"
FC2_BIAS = _L + "mlp.linear_fc2.bias"

#: μP's hidden matrices (width-scaled init, Adam LR ``lr / m``); the embedding and the readout are not
HIDDEN_MATRICES = (QKV_WEIGHT, PROJ_WEIGHT, FC1_WEIGHT, FC2_WEIGHT)

AxisKind = Literal[
    "vocab", "hidden_out", "hidden_in", "hidden_logit", "hidden_norm", "qkv", "proj_in", "ffn_out", "ffn_in"
]
#: what a new entry of the tensor is initialised to (before operator-specific zeroing and scaling)
FillKind = Literal["weight", "bias", "norm_weight", "norm_bias"]


@dataclass(frozen=True)
class TensorRole:
    """How growth treats one logical tensor.

    ``axes`` are the kinds of the per-layer axes (dim 0 of a ``layered`` tensor is the layer index
    and not listed). ``output_projection``: the tensor writes a layer's output into the residual
    stream (zeroed in zero-init new layers, which makes such a layer the identity).
    """

    key: str
    layered: bool
    axes: tuple[AxisKind, ...]
    fill: FillKind
    output_projection: bool = False


_ROLES = [
    TensorRole(EMBEDDING, False, ("vocab", "hidden_out"), "weight"),
    TensorRole(OUTPUT, False, ("vocab", "hidden_logit"), "weight"),
    TensorRole(FINAL_NORM_WEIGHT, False, ("hidden_norm",), "norm_weight"),
    TensorRole(FINAL_NORM_BIAS, False, ("hidden_norm",), "norm_bias"),
    TensorRole(NORM1_WEIGHT, True, ("hidden_norm",), "norm_weight"),
    TensorRole(NORM1_BIAS, True, ("hidden_norm",), "norm_bias"),
    TensorRole(QKV_WEIGHT, True, ("qkv", "hidden_in"), "weight"),
    TensorRole(QKV_BIAS, True, ("qkv",), "bias"),
    TensorRole(PROJ_WEIGHT, True, ("hidden_out", "proj_in"), "weight", output_projection=True),
    TensorRole(PROJ_BIAS, True, ("hidden_out",), "bias", output_projection=True),
    TensorRole(NORM2_WEIGHT, True, ("hidden_norm",), "norm_weight"),
    TensorRole(NORM2_BIAS, True, ("hidden_norm",), "norm_bias"),
    TensorRole(FC1_WEIGHT, True, ("ffn_out", "hidden_in"), "weight"),
    TensorRole(FC1_BIAS, True, ("ffn_out",), "bias"),
    TensorRole(FC2_WEIGHT, True, ("hidden_out", "ffn_in"), "weight", output_projection=True),
    TensorRole(FC2_BIAS, True, ("hidden_out",), "bias", output_projection=True),
]
ROLES: dict[str, TensorRole] = {r.key: r for r in _ROLES}


def readout_key(cfg: ModelConfig) -> str:
    """The readout matrix of model config ``cfg``: the output layer, or the embedding when tied."""
    return EMBEDDING if cfg.tie_embeddings else OUTPUT


def role_of(key: str) -> TensorRole:
    """The role of a logical key; ``GrowthError`` for a key growth does not know."""
    try:
        return ROLES[key]
    except KeyError:
        raise GrowthError(
            f"unknown tensor key {key!r}: growth knows the logical model tensors only ({', '.join(sorted(ROLES))})"
        ) from None


def axis_size(kind: AxisKind, shape: ModelShape, swiglu: bool) -> int:
    """The size of an axis of kind ``kind`` in a model of ``shape`` (``ffn_out``: 2 x ffn with ``swiglu``)."""
    return {
        "vocab": shape.vocab,
        "hidden_out": shape.hidden,
        "hidden_in": shape.hidden,
        "hidden_logit": shape.hidden,
        "hidden_norm": shape.hidden,
        "qkv": shape.qkv_rows,
        "proj_in": shape.heads * shape.head_dim,
        "ffn_out": shape.ffn * (2 if swiglu else 1),
        "ffn_in": shape.ffn,
    }[kind]


def tensor_shape(role: TensorRole, shape: ModelShape, swiglu: bool) -> tuple[int, ...]:
    """Logical shape of the tensor with ``role`` at sizes ``shape`` (layered: ``[layers, ...]``)."""
    dims = tuple(axis_size(a, shape, swiglu) for a in role.axes)
    return ((shape.layers,) if role.layered else ()) + dims


def logical_keys(cfg: ModelConfig) -> list[str]:
    """The keys of the logical state dict of a model with config ``cfg`` (a ``ModelConfig``)."""
    keys = []
    for r in _ROLES:
        if r.key == OUTPUT and cfg.tie_embeddings:
            continue
        if r.fill == "norm_bias" and cfg.normalization == "RMSNorm":
            continue
        if r.fill == "bias" and not cfg.bias:
            continue
        keys.append(r.key)
    return keys


def logical_shapes(cfg: ModelConfig, shape: ModelShape) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the logical state dict of model variant ``cfg`` at sizes ``shape``."""
    swiglu = cfg.activation == "swiglu"
    return {key: tensor_shape(ROLES[key], shape, swiglu) for key in logical_keys(cfg)}
