"""Checkpoints with megatron-core ``dist_checkpointing`` (torch_dist format).

Layout on disk::

    <root>/step_0000010/        one checkpoint: dist-checkpoint files + flm_checkpoint.json
    <root>/latest               text file naming the newest *complete* checkpoint directory

Contracts:
- A checkpoint saved under one TP/PP/DP layout loads under any other (dist_checkpointing reshards;
  the distributed optimizer uses the ``fully_reshardable`` format).
- Saves are atomic (``write_atomically``): files go to ``step_N.partial`` and the directory is
  renamed only after every rank finished; ``latest`` is replaced atomically afterwards. A crash
  mid-save leaves the previous checkpoint and ``latest`` untouched; stale ``.partial`` directories
  are removed by the next save.
- An existing complete checkpoint is never overwritten.
- ``flm_checkpoint.json`` holds what tools need without torch: step, consumed samples, the run
  config, the layout it was saved under, the growth-mask state and the ``engine`` that saved it.
- Both engines write this format through ``commit`` (the DeepSpeed engine's content is described
  in ``training.ds_checkpoint``); resuming needs the saving engine (``check_engine``), starting
  from the weights (``--init-from``) works across engines.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject

FORMAT_VERSION = 1
META_FILE = "flm_checkpoint.json"
LATEST_FILE = "latest"
OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointError(RuntimeError):
    pass


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def is_checkpoint(path: Path) -> bool:
    return (path / META_FILE).is_file()


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint directory, or of the latest checkpoint under a root."""
    path = Path(path)
    if not (path / META_FILE).is_file() and (path / LATEST_FILE).is_file():
        path = resolve(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint of this project (no {META_FILE}); pass a step_N directory "
            "or a checkpoint root that has a 'latest' file"
        )
    return json.loads(meta_path.read_text())


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a root whose ``latest`` names one."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        target = path / latest.read_text().strip()
        if is_checkpoint(target):
            return target
        raise CheckpointError(f"{latest} names {target}, which is not a complete checkpoint")
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    raise CheckpointError(f"no checkpoint in {path}: neither {META_FILE} nor a '{LATEST_FILE}' file")


def latest_in(root: str | Path) -> Optional[Path]:
    try:
        return resolve(root)
    except CheckpointError:
        return None


def _rank0() -> bool:
    return dist.get_rank() == 0


def unwrap_ddp(chunk):
    """The GPTModel inside megatron's DDP and Float16Module wrappers (DDP would prefix the
    sharded keys with 'module.'; checkpoints use the model's own keys)."""
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.transformer.module import Float16Module

    while isinstance(chunk, (DistributedDataParallel, Float16Module)):
        chunk = chunk.module
    return chunk


def _model_sd(chunk) -> dict[str, Any]:
    # `_extra_state` entries are Transformer Engine / fp8 metadata; the project's local layer spec
    # keeps None there, so they are neither saved nor expected (logical checkpoints have none).
    return {k: v for k, v in unwrap_ddp(chunk).sharded_state_dict().items() if not k.endswith("_extra_state")}


def model_sharded_state_dict(model_chunks) -> dict[str, Any]:
    if len(model_chunks) == 1:
        return {"model": _model_sd(model_chunks[0])}
    return {f"model{i}": _model_sd(m) for i, m in enumerate(model_chunks)}


def _rng_object(layout) -> ShardedObject:
    state = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state["tracker"] = get_cuda_rng_tracker().get_states()
    return ShardedObject(
        "rng_state", state, (layout.pp, layout.tp, layout.dp), (layout.pp_rank, layout.tp_rank, layout.dp_rank),
        replica_id=0,
    )


def write_atomically(final: str | Path, write: Callable[[Path], dict[str, Any]], *,
                     remove_partial_on_error: bool = True) -> Path:
    """The atomic directory protocol of every checkpoint writer (collective over all ranks).

    ``write(partial)`` writes the files (collectively) into ``<final>.partial`` and returns the
    metadata; rank 0 then adds ``flm_checkpoint.json`` (with the format version) and renames the
    directory to ``final``. ``final`` is never overwritten. If ``write`` raises, the partial
    directory is removed (unless ``remove_partial_on_error`` is false: training saves keep it, as a
    killed process would, for inspection); the next write to ``final`` removes a stale one.
    """
    final = Path(final)
    partial = final.with_name(final.name + ".partial")
    if final.exists():
        raise CheckpointError(f"refusing to overwrite the existing checkpoint {final}; choose a new destination")
    if _rank0():
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    dist.barrier()
    try:
        meta = write(partial)
        dist.barrier()
    except BaseException:
        if remove_partial_on_error and _rank0():
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if _rank0():
        (partial / META_FILE).write_text(json.dumps(dict(meta, format_version=FORMAT_VERSION), indent=2))
        os.replace(partial, final)
    dist.barrier()
    return final


def commit(root: str | Path, step: int, write: Callable[[Path], None], meta: dict[str, Any], layout,
           keep_last: Optional[int] = None) -> Path:
    """The save protocol of every engine (collective over all ranks); returns the directory.

    ``write(partial)`` writes the checkpoint files (collectively); ``write_atomically`` turns them into
    ``<root>/step_N`` with ``flm_checkpoint.json`` (``meta`` + step, layout); rank 0 then replaces
    ``latest`` and prunes old checkpoints.
    """
    root = Path(root)

    def write_files(partial: Path) -> dict[str, Any]:
        write(partial)
        return dict(meta, step=step, layout={"tp": layout.tp, "pp": layout.pp, "dp": layout.dp})

    final = write_atomically(root / step_dir_name(step), write_files, remove_partial_on_error=False)
    if _rank0():
        tmp = root / (LATEST_FILE + ".tmp")
        tmp.write_text(final.name + "\n")
        os.replace(tmp, root / LATEST_FILE)
        if keep_last:
            _prune(root, keep_last)
    dist.barrier()
    return final


def save(root: str | Path, *, step: int, model_chunks, optimizer, scheduler, layout, meta: dict[str, Any],
         keep_last: Optional[int] = None) -> Path:
    """Save a complete checkpoint atomically; returns its directory. Collective over all ranks."""

    def write(partial: Path) -> None:
        state = model_sharded_state_dict(model_chunks)
        model_sd = state["model"] if "model" in state else state
        if optimizer is not None:
            state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=False, metadata=OPTIM_METADATA)
        state["scheduler"] = scheduler.state_dict() if scheduler is not None else None
        state["rng_state"] = _rng_object(layout)
        state["step"] = step
        dist_checkpointing.save(state, str(partial))

    return commit(root, step, write, dict(meta, has_optimizer=optimizer is not None), layout, keep_last)


def engine_of(meta: dict[str, Any]) -> str:
    """The engine that saved a checkpoint (checkpoints from before the DeepSpeed engine: megatron)."""
    return meta.get("engine") or "megatron"


def check_engine(path: str | Path, engine: str) -> None:
    """Resuming needs the optimizer state in the engine's own form; name the way out otherwise."""
    saved = engine_of(read_meta(path))
    if saved != engine:
        raise CheckpointError(
            f"{path} was saved by engine: {saved} and cannot be resumed by engine: {engine}; resume it with "
            f"engine={saved}, or start this run from its weights with --init-from (fresh optimizer, step 0)"
        )


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir() and is_checkpoint(p))
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _unshare_adam_steps(optimizer) -> None:
    """megatron-core restores torch Adam's per-parameter ``step`` as ONE tensor shared by all
    parameters; torch increments it in place per parameter, so bias correction would run ahead.
    Give each parameter its own copy."""
    from training.optim import inner_optimizers

    for opt in inner_optimizers(optimizer):
        for state in opt.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()


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
        state["rng_state"] = _rng_object(layout)
    loaded = dist_checkpointing.load(state, str(path))
    for i, chunk in enumerate(model_chunks):
        key = "model" if len(model_chunks) == 1 else f"model{i}"
        result = unwrap_ddp(chunk).load_state_dict(loaded[key], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise CheckpointError(f"{path}: checkpoint does not fit the model: missing {missing[:5]}, "
                                  f"unexpected {list(result.unexpected_keys)[:5]}")
    if optimizer is not None:
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
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    get_cuda_rng_tracker().set_states(rng["tracker"])


def restore_rng(path: str | Path, layout) -> bool:
    """Restore this rank's RNG states from ``path`` when it was saved under the same layout
    (collective); returns whether they were restored."""
    path = resolve(path)
    if not _same_layout(read_meta(path), layout):
        return False
    _set_rng(dist_checkpointing.load({"rng_state": _rng_object(layout)}, str(path))["rng_state"])
    return True
