"""Growth operators as pure functions on logical tensors.

``prepare_growth(plan, cfg)`` checks a plan against the old model and resolves it into a ``Growth``:
the new config, one ``AxisMap`` per axis kind, the new layer stack and the MSG mask state.
``grow_tensor(growth, key, tensor)`` grows one logical tensor (streaming: a checkpoint can be grown
one tensor at a time; the result does not depend on the order); ``grow_state`` grows a whole
logical state dict.

Per tensor: each per-layer slice is gathered along every axis (``AxisMap.src``); entries that are
new along any axis get the tensor's fill (weights ~ N(0, init_std), biases 0, norm gains 1, norm
biases 0), every entry is multiplied by the product of the axes' ``scale``; new entries of an axis
with ``zero_new`` are zeroed; clone noise goes on cloned copies of weights. Layered tensors are then
assembled along the layer axis (``layer_sources``): old layers, copies of (grown) old layers, or
fresh layers; zero-init new layers get zero output projections. Random values come from generators
seeded by (plan seed, key, layer), so copies of a layer are identical and the order of tensors is
irrelevant.

μP (``cfg.mup``): new entries of the hidden matrices (``growth.roles.HIDDEN_MATRICES``) are drawn
with the grown model's μP std ``init_std / sqrt(m_new)``; the embedding and readout keep
``init_std``. When hidden growth changes ``m`` the kept entries of the readout matrix are multiplied
by ``growth.plan.mup_readout_scale`` (its docstring says why), so the grown model is the μP model
of its width and computes the old function.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from growth import axes as ax
from growth.errors import GrowthError
from growth.masks import MaskState
from growth.plan import GrowthPlan, check_plan, inexact_reasons, mup_readout_scale
from growth.roles import HIDDEN_MATRICES, TensorRole, logical_keys, readout_key, role_of, tensor_shape
from growth.tensor_ops import any_axis, gather, nonunit_product, place_old_, scale_kept_, zero_where_
from training.config import ModelConfig


@dataclass(frozen=True)
class Growth:
    """A plan resolved against the old model: everything ``grow_tensor`` needs. Immutable."""

    plan: GrowthPlan
    old_cfg: ModelConfig
    new_cfg: ModelConfig
    axes: dict[str, ax.AxisMap]
    layers: list[ax.LayerSource]
    masks: Optional[MaskState]
    #: the grown model computes the old function (masks at 0)
    exact: bool
    init_std: float
    #: μP: the factor on the kept entries of the readout matrix (``growth.plan.mup_readout_scale``)
    readout_scale: float = 1.0

    @property
    def swiglu(self) -> bool:
        """The MLP is SwiGLU: fc1 holds gate and up halves (``ffn_out`` axes are 2 x ffn rows)."""
        return self.old_cfg.activation == "swiglu"

    @property
    def readout_key(self) -> str:
        """The readout matrix: the output layer, or the embedding when tied."""
        return readout_key(self.old_cfg)

    def fill_std(self, role: TensorRole) -> float:
        """The std of new random entries of ``role``'s tensor: ``init_std``, divided by ``sqrt(m)`` of
        the grown model for μP's hidden matrices."""
        if self.new_cfg.mup is not None and role.key in HIDDEN_MATRICES:
            return self.init_std / math.sqrt(self.new_cfg.width_multiplier)
        return self.init_std

    def old_shape(self, key: str) -> tuple[int, ...]:
        """The logical shape of tensor ``key`` in the old model (layered tensors: layers first)."""
        return tensor_shape(role_of(key), self.plan.old, self.swiglu)

    def new_shape(self, key: str) -> tuple[int, ...]:
        """The logical shape of tensor ``key`` in the grown model; ``grow_tensor`` returns this shape."""
        return tensor_shape(role_of(key), self.plan.new, self.swiglu)

    def check_old(self, key: str, tensor: Tensor) -> TensorRole:
        """The role of ``key``; ``GrowthError`` if ``tensor`` is not at the plan's old shape."""
        role = role_of(key)
        want = self.old_shape(key)
        if tuple(tensor.shape) != want:
            raise GrowthError(f"{key}: shape {tuple(tensor.shape)} does not match the plan's old shape {want}")
        return role


@dataclass(frozen=True)
class GrowthResult:
    """What ``grow_state`` returns: the grown logical state dict (every tensor at
    ``Growth.new_shape``) and the grown model's config."""

    state: dict[str, Tensor]
    new_cfg: ModelConfig
    #: MSG masks to apply while training the grown model; None when no operator is msg
    masks: Optional[MaskState]
    exact: bool


def prepare_growth(plan: GrowthPlan, cfg: ModelConfig) -> Growth:
    """Resolve ``plan`` for the old model config ``cfg``; ``ConfigError`` if the plan does not fit."""
    new_cfg = check_plan(plan, cfg)
    old, new, ops = plan.old, plan.new, plan.operators
    maps = {"vocab": ax.vocab_map(old.vocab, new.vocab)}
    maps.update(ax.hidden_maps(ops.named("hidden"), old.hidden, new.hidden, cfg.normalization == "RMSNorm"))
    maps.update(ax.ffn_maps(ops.named("ffn"), old.ffn, new.ffn, cfg.activation == "swiglu"))
    maps.update(ax.head_maps(ops.named("heads"), old, new))
    layers = ax.layer_sources(ops.named("depth"), plan.depth.placement, plan.depth.init, old.layers, new.layers)
    return Growth(
        plan=plan,
        old_cfg=cfg,
        new_cfg=new_cfg,
        axes=maps,
        layers=layers,
        masks=_mask_state(plan, layers),
        exact=not inexact_reasons(plan, cfg),
        init_std=plan.init_std if plan.init_std is not None else cfg.init_std,
        readout_scale=mup_readout_scale(plan, cfg),
    )


def _mask_state(plan: GrowthPlan, layers: list[ax.LayerSource]) -> Optional[MaskState]:
    if not plan.uses_masks:
        return None
    old, new, ops = plan.old, plan.new, plan.operators
    state = MaskState(ramp_steps=plan.ramp.steps, shape=plan.ramp.shape, num_layers=new.layers)
    if ops.hidden == "msg":
        state.hidden_old, state.hidden_new = old.hidden, new.hidden
    if ops.ffn == "msg":
        state.ffn_old, state.ffn_new = old.ffn, new.ffn
    if ops.heads == "msg":
        layout = ax.head_layout("msg", old, new)
        state.head_is_new, state.group_is_new = layout.head_is_new, layout.group_is_new
    if ops.depth == "msg":
        state.new_layers = [j for j, src in enumerate(layers) if src.is_new]
    return state


def _generator(seed: int, *parts) -> torch.Generator:
    tag = zlib.crc32("|".join(map(str, parts)).encode())
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + tag) % (2**63))


def _randn(shape, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    return torch.randn(shape, generator=gen, dtype=work).to(dtype)


def _fill(role: TensorRole, shape, dtype, std: float, gen: torch.Generator) -> Tensor:
    if role.fill == "weight":
        return _randn(shape, dtype, gen).mul_(std)
    if role.fill == "norm_weight":
        return torch.ones(shape, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


def _grow_slice(g: Growth, role: TensorRole, maps: list[ax.AxisMap], old: Tensor, tag) -> Tensor:
    """One per-layer slice (or a non-layered tensor) grown along all its axes: the new entries'
    fill with the old block placed into it (or the gathered old tensor when nothing is new), then
    scaled and zeroed in place, so memory is about the grown slice."""
    if any(bool(m.new.any()) for m in maps):
        shape = tuple(m.size for m in maps)
        out = place_old_(
            _fill(role, shape, old.dtype, g.fill_std(role), _generator(g.plan.seed, *tag)).to(old.device), old, maps
        )
    else:
        out = gather(old, maps)
        if out is old:
            out = out.clone()
    scale = nonunit_product(maps, lambda m: m.scale)
    if scale is not None:
        out.mul_(scale.to(out.dtype).to(out.device))
    zero_where_(out, maps, lambda m: m.new & m.zero_new)
    if g.plan.clone_noise > 0 and role.fill == "weight":
        copies = (any_axis(maps, lambda m: m.copy) & ~any_axis(maps, lambda m: m.new)).to(out.device)
        noise = _randn(out.shape, out.dtype, _generator(g.plan.seed, *tag, "noise")).to(out.device)
        out = out + g.plan.clone_noise * noise * copies
    if g.readout_scale != 1.0 and role.key == g.readout_key:
        scale_kept_(out, maps, g.readout_scale)
    return out


def _fresh(g: Growth, role: TensorRole, shape, dtype, device, tag) -> Tensor:
    """A freshly initialised layer slice: the model's own init (weights ~ N(0, std), norms 1/0, biases 0)."""
    return _fill(role, shape, dtype, g.fill_std(role), _generator(g.plan.seed, *tag)).to(device)


def grow_layer(
    g: Growth, key: str, j: int, old_layer: Optional[Tensor], *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Layer ``j`` of the grown layered tensor ``key``.

    ``old_layer``: layer ``g.layers[j].source`` of the old tensor (per-layer shape), or None when
    that source is None (a fresh layer, made in ``dtype``). This is the streaming unit of ``flm
    grow``: ``grow_tensor(g, key, t)[j]`` equals ``grow_layer(g, key, j, t[source])`` bit for bit,
    whatever the order in which layers are produced.
    """
    role = role_of(key)
    if not role.layered:
        raise GrowthError(f"{key} is not a per-layer tensor; grow it with grow_tensor")
    src = g.layers[j]
    if src.source is None:
        out = _fresh(g, role, g.new_shape(key)[1:], dtype, torch.device("cpu"), (key, "fresh", j))
    else:
        want = g.old_shape(key)[1:]
        if old_layer is None or tuple(old_layer.shape) != want:
            got = None if old_layer is None else tuple(old_layer.shape)
            raise GrowthError(f"{key}: new layer {j} is grown from old layer {src.source} of shape {want}; got {got}")
        out = _grow_slice(g, role, [g.axes[a] for a in role.axes], old_layer, (key, src.source))
    if src.zero_output and role.output_projection:
        out = torch.zeros_like(out)
    return out


def grow_tensor(g: Growth, key: str, tensor: Tensor) -> Tensor:
    """``tensor`` (logical, old shape) grown to the new shape. Pure: the input is not modified."""
    role = g.check_old(key, tensor)
    if not role.layered:
        return _grow_slice(g, role, [g.axes[a] for a in role.axes], tensor, (key,))
    out = tensor.new_empty(g.new_shape(key))
    for j, src in enumerate(g.layers):
        out[j] = grow_layer(g, key, j, None if src.source is None else tensor[src.source], dtype=tensor.dtype)
    return out


def grow_state(plan: GrowthPlan, cfg: ModelConfig, state: dict[str, Tensor]) -> GrowthResult:
    """Grow a whole logical state dict of a model with config ``cfg``.

    ``state`` must hold exactly the logical keys of ``cfg`` (``growth.roles.logical_keys``) at the
    plan's old shapes; the result holds the same keys at the new shapes.
    """
    g = prepare_growth(plan, cfg)
    want = set(logical_keys(cfg))
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        raise GrowthError(f"state dict does not match the model config: missing {missing}, unexpected {extra}")
    out = {key: grow_tensor(g, key, t) for key, t in state.items()}
    return GrowthResult(state=out, new_cfg=g.new_cfg, masks=g.masks, exact=g.exact)
