"""Checkpoints of the DeepSpeed engine, written directly in the project's format.

Format: the same ``dist_checkpointing`` (torch_dist) checkpoint the megatron engine writes, with the
model under megatron's sharded keys (layers stacked on dim 0) and Adam's moments under
``optimizer.state.exp_avg(_sq).<key>`` — exactly what ``training.checkpoint.logical.read_logical`` reads — plus
the LR scheduler state and the step as common state, the per-rank RNG states, and
``flm_checkpoint.json`` with ``engine: deepspeed``. Saves go through ``training.checkpoint.commit``
(``.partial`` directory, rename, ``latest`` last; never overwrites).

Why not DeepSpeed's own ``engine.save_checkpoint``: its files are per-DP-rank ZeRO partitions
(``zero_pp_rank_*_optim_states.pt``) tied to the DP size and ZeRO stage they were written under;
growth, ``flm export-hf``, the IQ backend and the megatron engine all read the project format, and
DeepSpeed's converters (``zero_to_fp32`` gives weights without the optimizer state, ``ds_to_universal``
needs an offline pass and a model-specific ``universal_checkpoint_info``) would add a conversion step
between every stage of a growth run. Writing the project format directly makes a DeepSpeed checkpoint
growable by ``flm grow``, loadable by ``--init-from`` under either engine, and resumable under any DP
size and ZeRO stage, with no conversion.

How: DeepSpeed's public accessors assemble full tensors from the ZeRO partitions —
``deepspeed.utils.safe_get_full_fp32_param`` / ``safe_get_full_optimizer_state`` (collective; the
fp32 master weights, so a bf16 run resumes exactly) — and scatter them back —
``safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state``, plus ``zero.GatheredParameters``
for the ZeRO-3 model partitions. Memory: tensors are gathered one parameter at a time; each is kept
(on CPU) only by the rank that writes it, ranks being assigned parameters so their bytes balance, so
a save holds about 1/world of the fp32 weights and moments per rank. Loads read one checkpoint key
(one tensor, all its layers) at a time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from training.checkpoint import CheckpointError, commit
from training.checkpoint.dcp_io import balanced
from training.checkpoint.logical import MOMENTS, moment_key
from training.engine.megatron_checkpoint import model_state_dict, rng_object


def moment_prefix(moment: str) -> str:
    """Key prefix of a moment in the project format."""
    return moment_key(moment, "")


@dataclass(frozen=True)
class ParamEntry:
    """One model parameter and how the project format stores it.

    ``sharded`` is the parameter's entry of megatron's sharded state dict (a ``ShardedTensor``, or a
    ``ShardedTensorFactory`` for SwiGLU's fused fc1) taken before ZeRO partitions the parameter;
    ``shape`` is the full shape (ZeRO-3 leaves ``param.data`` empty afterwards).
    """

    name: str
    param: torch.nn.Parameter
    sharded: Any
    shape: tuple[int, ...]

    def request(self, prefix: str, data: torch.Tensor, replica_id: int = 0):
        """The sharded entry under ``prefix + key`` holding ``data`` (fp32, full parameter shape)."""
        changes: dict[str, Any] = {"key": prefix + self.sharded.key, "data": data, "replica_id": replica_id}
        if isinstance(self.sharded, ShardedTensor):
            changes["dtype"] = data.dtype
        return dataclasses.replace(self.sharded, **changes)


def param_entries(module: torch.nn.Module) -> list[ParamEntry]:
    """The parameters of ``module`` (TP = PP = 1) with their checkpoint entries, in a fixed order
    (the same on every rank). Call before ``deepspeed.initialize``."""
    params = {id(p): (n, p) for n, p in module.named_parameters()}
    entries, seen = [], set()
    for name, sh in model_state_dict(module).items():
        if not isinstance(sh, (ShardedTensor, ShardedTensorFactory)):
            continue
        if id(sh.data) not in params:
            raise CheckpointError(f"internal: checkpoint entry {name} is not a parameter of the model")
        _, p = params[id(sh.data)]
        entries.append(ParamEntry(name, p, sh, tuple(p.shape)))
        seen.add(id(p))
    missing = [n for i, (n, p) in params.items() if i not in seen and p.requires_grad]
    if missing:
        raise CheckpointError(f"internal: parameters without a checkpoint entry: {missing[:5]}")
    return entries


def _full_tensors(e: ParamEntry) -> dict[str, torch.Tensor]:
    """Full fp32 master weight and Adam moments of one parameter (collective over the DP group)."""

    out = {"": safe_get_full_fp32_param(e.param)}
    for m in MOMENTS:
        out[moment_prefix(m)] = safe_get_full_optimizer_state(e.param, m)
    for what, t in out.items():
        if t is None:
            raise CheckpointError(f"internal: DeepSpeed returned no {what or 'weight'} for {e.name}")
    return {what: t.detach().reshape(e.shape).float().cpu() for what, t in out.items()}


def save(
    root: str | Path,
    *,
    step: int,
    entries: list[ParamEntry],
    scheduler,
    layout,
    meta: dict[str, Any],
    keep_last: Optional[int] = None,
) -> Path:
    """Save the DeepSpeed engine's state as a project checkpoint (collective). Returns its directory."""
    rank, world = dist.get_rank(), dist.get_world_size()

    def write(partial: Path) -> None:
        # which rank writes each entry: every rank about 1/world of the bytes
        owners = balanced([math.prod(e.shape) for e in entries], world)
        state: dict[str, Any] = {}
        for i, (e, owner) in enumerate(zip(entries, owners)):
            tensors = _full_tensors(e)  # every rank takes part in the gather, the owner keeps the result
            if owner == rank:
                for what, t in tensors.items():
                    state[f"{i}/{what}"] = e.request(what, t)
        state["scheduler"] = scheduler.state_dict()
        state["rng_state"] = rng_object(layout)
        state["step"] = step
        dist_checkpointing.save(state, str(partial))

    return commit(root, step, write, dict(meta, has_optimizer=True, has_moments=False), layout, keep_last)


def _by_key(entries: list[ParamEntry]) -> Iterator[list[ParamEntry]]:
    groups: dict[str, list[ParamEntry]] = {}
    for e in entries:
        groups.setdefault(e.sharded.key, []).append(e)
    yield from groups.values()


def read_full(
    path: Path, entries: list[ParamEntry], prefixes: list[str]
) -> Iterator[tuple[ParamEntry, dict[str, torch.Tensor]]]:
    """Full fp32 tensors of every entry from checkpoint ``path`` (any engine, any layout): weights
    (prefix ``""``) and/or moments (``moment_prefix(m)``); one checkpoint key at a time. Tensors the
    checkpoint lacks are left out of the dict. Collective (every rank reads the same)."""
    available = set(dist_checkpointing.load_tensors_metadata(str(path)))
    replica = dist.get_rank()  # every rank reads everything; one of them counts as the main replica
    for group in _by_key(entries):
        request = {
            f"{i}/{prefix}": e.request(prefix, torch.empty(e.shape, dtype=torch.float32), replica)
            for i, e in enumerate(group)
            for prefix in prefixes
            if prefix + e.sharded.key in available
        }
        loaded = dist_checkpointing.load(request, str(path)) if request else {}
        for i, e in enumerate(group):
            yield e, {prefix: loaded[f"{i}/{prefix}"] for prefix in prefixes if f"{i}/{prefix}" in loaded}


def set_weight(e: ParamEntry, value: torch.Tensor) -> None:
    """Set a parameter everywhere DeepSpeed keeps it: the model's (ZeRO-3: partitioned) weight and
    the fp32 master copy the optimizer updates. Collective under ZeRO-3."""

    with torch.no_grad():
        if hasattr(e.param, "ds_id"):  # ZeRO-3: gather, set, and re-partition rank 0's value
            with deepspeed.zero.GatheredParameters([e.param], modifier_rank=0):
                e.param.data.copy_(value.to(e.param.device).reshape(e.param.shape))
        else:
            e.param.data.copy_(value.to(e.param.device).reshape(e.param.shape))
        safe_set_full_fp32_param(e.param, value.to(e.param.device))


def set_moment(e: ParamEntry, moment: str, value: torch.Tensor) -> None:

    with torch.no_grad():
        safe_set_full_optimizer_state(e.param, value.to(e.param.device), moment)


def load_into(path: Path, entries: list[ParamEntry], *, weights: bool, moments: bool, require_moments: bool) -> int:
    """Load weights and/or Adam moments of checkpoint ``path`` into the DeepSpeed engine.

    Every weight must be present (a shape mismatch is a ``CheckpointError``); moments missing from
    the checkpoint keep their zeros (the growth rule for new tensors) unless ``require_moments``.
    Returns how many parameters got moments."""
    prefixes = ([""] if weights else []) + ([moment_prefix(m) for m in MOMENTS] if moments else [])
    with_moments = 0
    for e, tensors in read_full(path, entries, prefixes):
        if weights:
            if "" not in tensors:
                raise CheckpointError(f"{path} has no weight {e.sharded.key} (parameter {e.name})")
            set_weight(e, tensors[""])
        got = [m for m in MOMENTS if moment_prefix(m) in tensors]
        if moments and require_moments and len(got) < len(MOMENTS):
            raise CheckpointError(
                f"{path} has no Adam moments for {e.sharded.key}; it cannot be resumed, "
                "start from its weights with --init-from"
            )
        for m in got:
            set_moment(e, m, tensors[moment_prefix(m)])
        with_moments += bool(got)
    return with_moments


def load_scheduler_state(path: Path) -> Optional[dict[str, Any]]:
    """The LR scheduler state saved as common state (both engines save it under ``scheduler``)."""
    common = dist_checkpointing.load_common_state_dict(str(path))
    return common.get("scheduler") if isinstance(common, dict) else None
