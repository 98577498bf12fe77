"""The megatron engine's checkpoints: model, optimizer, scheduler and RNG through ``dist_checkpointing``.

- A checkpoint saved under one TP/PP/DP layout loads under any other (dist_checkpointing reshards;
  the distributed optimizer uses the ``fully_reshardable`` format).
- ``save`` writes through ``training.checkpoint.atomic.commit`` (atomic, never overwrites).
- ``load_moments`` puts logical Adam moments (``training.checkpoint.logical``) into *any* optimizer
  under *any* layout: each parameter's moment slice is read with the parameter's own sharding (so
  TP/PP slicing is megatron's), then copied into the plain or the distributed optimizer's state.
  The fp32 master weights of a bf16 run (``optimizer.state.fp32_param.*``, carried by growth) go
  into the optimizer's main parameters the same way (into the parameter itself in an fp32 run).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory
from megatron.core.distributed import DistributedDataParallel
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
from megatron.core.transformer.module import Float16Module

from training.checkpoint.atomic import commit
from training.checkpoint.logical import MASTER, MASTER_STORED, MOMENTS, moment_key
from training.checkpoint.meta import CheckpointError, read_meta, resolve
from training.engine.optim import inner_optimizers, set_torch_adam_step

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def unwrap_ddp(chunk):
    """The GPTModel inside megatron's DDP and Float16Module wrappers (DDP would prefix the
    sharded keys with 'module.'; checkpoints use the model's own keys)."""
    while isinstance(chunk, (DistributedDataParallel, Float16Module)):
        chunk = chunk.module
    return chunk


def model_state_dict(chunk) -> dict[str, Any]:
    # `_extra_state` entries are Transformer Engine / fp8 metadata; the project's local layer spec
    # keeps None there, so they are neither saved nor expected (logical checkpoints have none).
    return {k: v for k, v in unwrap_ddp(chunk).sharded_state_dict().items() if not k.endswith("_extra_state")}


def model_sharded_state_dict(model_chunks) -> dict[str, Any]:
    if len(model_chunks) == 1:
        return {"model": model_state_dict(model_chunks[0])}
    return {f"model{i}": model_state_dict(m) for i, m in enumerate(model_chunks)}


def rng_object(layout) -> ShardedObject:
    state = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    state["tracker"] = get_cuda_rng_tracker().get_states()
    return ShardedObject(
        "rng_state",
        state,
        (layout.pp, layout.tp, layout.dp),
        (layout.pp_rank, layout.tp_rank, layout.dp_rank),
        replica_id=0,
    )


def save(
    root: str | Path,
    *,
    step: int,
    model_chunks,
    optimizer,
    scheduler,
    layout,
    meta: dict[str, Any],
    keep_last: Optional[int] = None,
) -> Path:
    """Save a complete checkpoint atomically; returns its directory. Collective over all ranks."""

    def write(partial: Path) -> None:
        state = model_sharded_state_dict(model_chunks)
        model_sd = state["model"] if "model" in state else state
        if optimizer is not None:
            with _distributed_optimizer_state_in_buffer_coordinates(optimizer):
                state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=False, metadata=OPTIM_METADATA)
        state["scheduler"] = scheduler.state_dict() if scheduler is not None else None
        state["rng_state"] = rng_object(layout)
        state["step"] = step
        dist_checkpointing.save(state, str(partial))

    return commit(root, step, write, dict(meta, has_optimizer=optimizer is not None), layout, keep_last)


def _in_buffer_coordinates(opt, state: dict) -> dict:
    """``state`` (``get_parameter_state_dp_zero``'s result) with each bucket's elements moved to the
    bucket's offset in its grad buffer, the padding between buckets restored as zeros."""
    out: dict = {}
    for gbuf_idx, dtype_state in state.items():
        if not isinstance(gbuf_idx, int):  # "buckets_coalesced": a flag, not a buffer
            out[gbuf_idx] = dtype_state
            continue
        buffer = opt.buffers[gbuf_idx]
        out[gbuf_idx] = {}
        for dtype, world in dtype_state.items():
            placed = {}
            for key, tensor in world.items():
                if not isinstance(tensor, torch.Tensor):
                    placed[key] = tensor  # "numel_unpadded": an int, not per-element state
                    continue
                full = tensor.new_zeros(buffer.numel)
                unpadded_start = 0
                for bucket in buffer.buckets:
                    n = bucket.numel_unpadded
                    full[bucket.offset : bucket.offset + n].copy_(tensor[unpadded_start : unpadded_start + n])
                    unpadded_start += n
                placed[key] = full
            out[gbuf_idx][dtype] = placed
    return out


@contextlib.contextmanager
def _distributed_optimizer_state_in_buffer_coordinates(optimizer) -> Iterator[None]:
    """Work around megatron-core's ``fully_reshardable`` save of the distributed optimizer.

    ``get_parameter_state_dp_zero`` concatenates the buckets of a grad buffer *without* the padding
    between them, but ``sharded_param_state_fully_reshardable`` slices that tensor at each
    parameter's ``param_index_map`` range, which counts the padding. Every parameter after the
    first padded bucket end is saved from the wrong elements (its master weight and Adam moments
    are another parameter's, shifted). A buffer has several buckets when bucketing is on, and always
    on the first pipeline stage with tied embeddings, where megatron gives the ``shared_embedding``
    weight its own bucket: a PP resume then loaded a wrong embedding. Loading slices the saved
    model-shaped tensors by parameter-local ranges and is unaffected. While saving, each distributed
    optimizer's gathered state is laid out in buffer coordinates, padding included.
    """
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not hasattr(opt, "get_parameter_state_dp_zero") or not hasattr(opt, "buffers"):
            continue
        original = opt.get_parameter_state_dp_zero

        def gather(*args, opt=opt, original=original, **kwargs):
            state = original(*args, **kwargs)
            return None if state is None else _in_buffer_coordinates(opt, state)

        opt.get_parameter_state_dp_zero = gather  # instance attribute: this object only
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt.get_parameter_state_dp_zero


def _unshare_adam_steps(optimizer) -> None:
    """megatron-core restores torch Adam's per-parameter ``step`` as ONE tensor shared by all
    parameters; torch increments it in place per parameter, so bias correction would run ahead.
    Give each parameter its own copy."""
    for opt in inner_optimizers(optimizer):
        for state in opt.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


@contextlib.contextmanager
def _distributed_optimizer_keeps_torch_adam_step(optimizer) -> Iterator[None]:
    """Work around megatron-core's torch-Adam path of the distributed optimizer (used whenever
    neither Apex nor Transformer Engine provides FusedAdam, on GPUs too).

    Loading a ``fully_reshardable`` checkpoint, megatron first gives every parameter's torch Adam
    state a ``step`` (from the saved param groups), then copies the saved per-parameter tensors
    into *every* key of that state (``_set_main_param_and_optimizer_states``), but the saved ones
    leave ``step`` out: ``KeyError: 'step'``. While loading, each distributed optimizer's copy is
    handed the parameter's own ``step`` as the source for that key (copying a value onto itself),
    so the other keys load as megatron intends and ``step`` keeps the value megatron set.
    """
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not hasattr(opt, "_set_main_param_and_optimizer_states") or not hasattr(opt, "model_param_group_index_map"):
            continue
        original = opt._set_main_param_and_optimizer_states

        def set_states(model_param, tensors, opt=opt, original=original):
            group_index, group_order = opt.model_param_group_index_map[model_param]
            main_param = opt.optimizer.param_groups[group_index]["params"][group_order]
            own_step = opt.optimizer.state.get(main_param, {}).get("step")
            if "step" not in tensors and isinstance(own_step, torch.Tensor):
                tensors = dict(tensors, step=own_step.clone())
            original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states  # instance attribute: this object only
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states


def load(path: str | Path, *, model_chunks, optimizer=None, scheduler=None, layout=None) -> dict[str, Any]:
    """Load model (and optimizer/scheduler/RNG when given) from ``path``; returns the metadata.

    RNG states are restored only when the layout is unchanged (they are per rank); after a layout
    change the freshly seeded RNG is kept (this matters only with dropout on).
    """
    path = resolve(path)
    meta = read_meta(path)
    state = model_sharded_state_dict(model_chunks)
    model_sd = state["model"] if "model" in state else state
    if optimizer is not None:
        if not meta.get("has_optimizer", True):
            raise CheckpointError(f"{path} has no optimizer state; load it with --load-weights-only semantics")
        state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=OPTIM_METADATA)
    same_layout = _same_layout(meta, layout)
    if same_layout:
        state["rng_state"] = rng_object(layout)
    loaded = dist_checkpointing.load(state, str(path))
    for i, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{i}"
        result = unwrap_ddp(chunk).load_state_dict(loaded[key], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise CheckpointError(
                f"{path}: checkpoint does not fit the model: missing {missing[:5]}, "
                f"unexpected {list(result.unexpected_keys)[:5]}"
            )
    if optimizer is not None:
        with _distributed_optimizer_keeps_torch_adam_step(optimizer):
            optimizer.load_state_dict(loaded["optimizer"])
        _unshare_adam_steps(optimizer)
    if scheduler is not None and loaded.get("scheduler") is not None:
        scheduler.load_state_dict(loaded["scheduler"])
    if same_layout:
        _set_rng(loaded["rng_state"])
    return meta


def _same_layout(meta: dict[str, Any], layout) -> bool:
    return layout is not None and meta["layout"] == {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp}


def _set_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    get_cuda_rng_tracker().set_states(rng["tracker"])


def restore_rng(path: str | Path, layout) -> bool:
    """Restore this rank's RNG states from ``path`` when it was saved under the same layout
    (collective); returns whether they were restored."""
    path = resolve(path)
    if not _same_layout(read_meta(path), layout):
        return False
    _set_rng(dist_checkpointing.load({"rng_state": rng_object(layout)}, str(path))["rng_state"])
    return True


def _renamed(sh, key: str):
    """A copy of a model sharded entry reading ``key`` into a fresh fp32 tensor of the same local
    shape (optimizer state is fp32 also when the model is bf16: reading it into the model's dtype
    would round the moments and master weights)."""
    data = torch.empty_like(sh.data, dtype=torch.float32)
    if isinstance(sh, ShardedTensor):
        return dataclasses.replace(sh, key=key, data=data, dtype=torch.float32)
    return dataclasses.replace(sh, key=key, data=data)


def _float16_main_params(optimizer) -> dict[int, torch.Tensor]:
    """model param id -> fp32 main param for megatron's mixed-precision (non-distributed) optimizer."""
    mapping = {}
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for model_group, main_group in zip(
            getattr(opt, "float16_groups", []), getattr(opt, "fp32_from_float16_groups", [])
        ):
            for p, main in zip(model_group, main_group):
                mapping[id(p)] = main
    return mapping


def load_moments(ckpt: str | Path, model_chunks, optimizer, step: int) -> int:
    """Copy the checkpoint's Adam moments (and fp32 master weights, when it has them) into
    ``optimizer`` for this rank's shards; set Adam's step.

    Returns the number of parameters whose moments were loaded. Parameters without moments in the
    checkpoint keep zero moments (documented growth rule for new tensors). Master weights go into
    the optimizer's fp32 main parameters; the model's bf16 weights stay as loaded from the
    checkpoint (the rounding of those masters), and the first step copies the updated masters back.
    """
    path = resolve(ckpt)
    available = set(dist_checkpointing.load_tensors_metadata(str(path)))
    request: dict[str, Any] = {}
    targets: list[tuple[str, str, torch.nn.Parameter]] = []
    for ci, chunk in enumerate(model_chunks):
        params_by_id = {id(p): p for p in chunk.parameters()}
        for name, sh in model_state_dict(chunk).items():
            if not isinstance(sh, (ShardedTensor, ShardedTensorFactory)) or id(sh.data) not in params_by_id:
                continue
            masters = [moment_key(n, sh.key) for n in MASTER_STORED if moment_key(n, sh.key) in available]
            for m in (*MOMENTS, MASTER):
                key = masters[0] if m == MASTER and masters else moment_key(m, sh.key)
                if key in available:
                    slot = f"{ci}/{m}/{name}"
                    request[slot] = _renamed(sh, key)
                    targets.append((slot, m, params_by_id[id(sh.data)]))
    loaded = dist_checkpointing.load(request, str(path)) if request else {}
    main_of = _float16_main_params(optimizer)
    distributed = hasattr(optimizer, "_get_model_param_range_map") or any(
        hasattr(o, "_get_model_param_range_map") for o in getattr(optimizer, "chained_optimizers", [])
    )
    done = set()
    for slot, m, param in targets:
        local = loaded[slot]
        if distributed:
            opt = next(
                (
                    o
                    for o in getattr(optimizer, "chained_optimizers", [optimizer])
                    if param in getattr(o, "model_param_gbuf_map", {})
                ),
                None,
            )
            if opt is None:  # no part of this parameter is in this DP rank's optimizer shard
                continue
            rng = opt._get_model_param_range_map(param)["param"]
            states = opt._get_main_param_and_optimizer_states(param)
            target = states["param" if m == MASTER else m]
            target.detach().copy_(local.reshape(-1)[rng.start : rng.end].to(target.dtype))
        else:
            main = main_of.get(id(param), param)
            target = main.detach() if m == MASTER else _state_of(optimizer, main)[m]
            target.copy_(local.to(target.dtype))
        if m != MASTER:
            done.add(id(param))
    for opt in inner_optimizers(optimizer):
        set_torch_adam_step(opt, step)
    return len(done)


def _state_of(optimizer, param) -> dict:
    for opt in inner_optimizers(optimizer):
        if param in opt.state:
            return opt.state[param]
    raise CheckpointError("internal: a model parameter has no optimizer state")
