"""The logical (unsharded) view of checkpoints, the interface between the engine and ``growth/``.

- ``read_logical(ckpt)``: full tensors of a checkpoint saved under any layout: model parameters
  under their checkpoint keys (layers stacked on dim 0), and Adam moments under
  ``optimizer.state.exp_avg.<key>`` / ``optimizer.state.exp_avg_sq.<key>`` — the names both
  megatron optimizer formats (plain and distributed ``fully_reshardable``) use.
- ``write_logical(out, params, meta, moments)``: a checkpoint made of logical tensors (what
  ``flm import-hf`` produces). It has no optimizer object state, only moments, so it is started
  with ``--init-from`` (weights and moments), not resumed. ``write_logical_chunks`` is the same
  with tensors produced chunk by chunk while they are written (what ``flm grow`` uses to stream);
  per-layer tensors are stored one layer per chunk, as megatron stores them, so they can be read
  back layer by layer (``training.dcp_io.TensorReader``).
- ``load_moments(ckpt, model_chunks, optimizer, step)``: put logical moments into *any* optimizer
  under *any* layout: each parameter's moment slice is read with the parameter's own sharding
  (so TP/PP slicing is megatron's), then copied into the plain or the distributed optimizer's state.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from training.checkpoint import CheckpointError, _model_sd, resolve, write_atomically
from training.dcp_io import ChunkedTensor, in_memory, write_tensors
from training.optim import inner_optimizers, set_torch_adam_step

MOMENTS = ("exp_avg", "exp_avg_sq")


def moment_key(moment: str, key: str) -> str:
    return f"optimizer.state.{moment}.{key}"


def read_logical(ckpt: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(params, moments) of a checkpoint; ``moments[m][key]`` for m in exp_avg, exp_avg_sq."""
    from training.parallel import init_process_group

    init_process_group()
    path = resolve(ckpt)
    # load_plain_tensors also returns the common (non-tensor) entries; keep the tensors
    plain = {k: v for k, v in dist_checkpointing.load_plain_tensors(str(path)).items() if isinstance(v, torch.Tensor)}
    params = {k: v for k, v in plain.items() if not k.startswith("optimizer.") and not k.endswith("_extra_state")}
    moments: dict[str, dict[str, torch.Tensor]] = {m: {} for m in MOMENTS}
    for m in MOMENTS:
        prefix = moment_key(m, "")
        for k, v in plain.items():
            if k.startswith(prefix):
                moments[m][k[len(prefix):]] = v
    return params, moments


def layer_rows(key: str) -> Optional[int]:
    """Rows per stored chunk for logical tensor ``key`` (a parameter or moment key): 1 for the
    stacked per-layer tensors (``decoder.layers.*``, stored one layer per chunk as megatron stores
    them, so they can be read back layer by layer), None (one chunk) for the others."""
    param = key
    for m in MOMENTS:
        param = param.removeprefix(moment_key(m, ""))
    return 1 if param.startswith("decoder.layers.") else None


def write_logical_chunks(out: str | Path, entries: list[ChunkedTensor],
                         meta: dict[str, Any] | Callable[[Path], dict[str, Any]], *,
                         has_moments: bool) -> Path:
    """Write a logical checkpoint whose tensors are produced chunk by chunk (``training.dcp_io``).

    Collective when distributed (every rank passes the same entries; chunks are spread over the
    ranks). ``meta`` is the metadata dict, or a function called with the directory once every tensor
    is written (it may read them back, e.g. to verify) that returns it. Atomic: everything goes to
    ``<out>.partial``, renamed to ``out`` only when complete; ``out`` is never overwritten and no
    partial directory is left when anything fails.
    """
    from training.parallel import init_process_group

    init_process_group()

    def write(partial: Path) -> dict[str, Any]:
        write_tensors(partial, entries)
        return dict(meta(partial) if callable(meta) else meta, layout={"tp": 1, "pp": 1, "dp": 1},
                    has_optimizer=False, has_moments=has_moments)

    return write_atomically(out, write)


def write_logical(out: str | Path, params: dict[str, torch.Tensor], meta: dict[str, Any],
                  moments: Optional[dict[str, dict[str, torch.Tensor]]] = None) -> Path:
    """Write a checkpoint from full tensors (collective). Atomic; never overwrites."""
    entries = [in_memory(k, v.contiguous(), layer_rows(k)) for k, v in params.items()]
    for m, tensors in (moments or {}).items():
        entries += [in_memory(moment_key(m, k), v.contiguous(), layer_rows(k)) for k, v in tensors.items()]
    return write_logical_chunks(out, entries, meta, has_moments=bool(moments))


def _renamed(sh, key: str):
    """A copy of a model sharded entry reading ``key`` into a fresh tensor of the same local shape."""
    return dataclasses.replace(sh, key=key, data=torch.empty_like(sh.data))


def _float16_main_params(optimizer) -> dict[int, torch.Tensor]:
    """model param id -> fp32 main param for megatron's mixed-precision (non-distributed) optimizer."""
    mapping = {}
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        for model_group, main_group in zip(getattr(opt, "float16_groups", []), getattr(opt, "fp32_from_float16_groups", [])):
            for p, main in zip(model_group, main_group):
                mapping[id(p)] = main
    return mapping


def load_moments(ckpt: str | Path, model_chunks, optimizer, step: int) -> int:
    """Copy the checkpoint's Adam moments into ``optimizer`` for this rank's shards; set Adam's step.

    Returns the number of parameters whose moments were loaded. Parameters without moments in the
    checkpoint keep zero moments (documented growth rule for new tensors).
    """
    path = resolve(ckpt)
    available = set(dist_checkpointing.load_tensors_metadata(str(path)))
    request: dict[str, Any] = {}
    targets: list[tuple[str, str, torch.nn.Parameter]] = []
    for ci, chunk in enumerate(model_chunks):
        params_by_id = {id(p): p for p in chunk.parameters()}
        for name, sh in _model_sd(chunk).items():
            if not isinstance(sh, (ShardedTensor, ShardedTensorFactory)) or id(sh.data) not in params_by_id:
                continue
            for m in MOMENTS:
                key = moment_key(m, sh.key)
                if key in available:
                    slot = f"{ci}/{m}/{name}"
                    request[slot] = _renamed(sh, key)
                    targets.append((slot, m, params_by_id[id(sh.data)]))
    loaded = dist_checkpointing.load(request, str(path)) if request else {}
    main_of = _float16_main_params(optimizer)
    distributed = hasattr(optimizer, "_get_model_param_range_map") or any(
        hasattr(o, "_get_model_param_range_map") for o in getattr(optimizer, "chained_optimizers", []))
    done = set()
    for slot, m, param in targets:
        local = loaded[slot]
        if distributed:
            opt = next((o for o in getattr(optimizer, "chained_optimizers", [optimizer])
                        if param in getattr(o, "model_param_gbuf_map", {})), None)
            if opt is None:  # no part of this parameter is in this DP rank's optimizer shard
                continue
            rng = opt._get_model_param_range_map(param)["param"]
            states = opt._get_main_param_and_optimizer_states(param)
            states[m].copy_(local.reshape(-1)[rng.start:rng.end])
        else:
            main = main_of.get(id(param), param)
            state = _state_of(optimizer, main)
            state[m].copy_(local.to(state[m].dtype))
        done.add(id(param))
    for opt in inner_optimizers(optimizer):
        set_torch_adam_step(opt, step)
    return len(done)


def _state_of(optimizer, param) -> dict:
    for opt in inner_optimizers(optimizer):
        if param in opt.state:
            return opt.state[param]
    raise CheckpointError("internal: a model parameter has no optimizer state")
