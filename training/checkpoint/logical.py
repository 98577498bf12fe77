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
  back layer by layer (``training.checkpoint.dcp_io.TensorReader``).

Reading uses ``TensorReader`` (plain torch DCP); none of this needs megatron-core or a process
group. Writing is collective when a process group is initialized (the caller starts it).
Loading moments into an engine's optimizer is the engine's job
(``training.engine.megatron_checkpoint.load_moments``).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from pathlib import Path
from typing import Any, Optional

import torch

from training.checkpoint.atomic import write_atomically
from training.checkpoint.dcp_io import ChunkedTensor, TensorReader, in_memory, write_tensors
from training.checkpoint.meta import resolve

MOMENTS = ("exp_avg", "exp_avg_sq")


#: the fp32 master weights of a mixed-precision (bf16) run: megatron's mixed-precision optimizer
#: stores them under ``optimizer.state.fp32_param.<param key>`` (the name logical checkpoints use),
#: the distributed optimizer's ``fully_reshardable`` format under ``optimizer.state.param.<param key>``
MASTER = "fp32_param"
MASTER_STORED = (MASTER, "param")


def moment_key(moment: str, key: str) -> str:
    return f"optimizer.state.{moment}.{key}"


def master_key(key: str) -> str:
    """Where a logical checkpoint stores the fp32 master weights of parameter ``key`` (bf16 runs only)."""
    return moment_key(MASTER, key)


def stored_master_key(stored: Container[str], dtype_of: Callable[[str], torch.dtype], key: str) -> Optional[str]:
    """The key under which a checkpoint holding keys ``stored`` keeps master weights of parameter
    ``key`` that differ from the parameter (a bf16 run's fp32 masters), or None (an fp32 run: the
    parameter is its own master)."""
    for name in MASTER_STORED:
        if moment_key(name, key) in stored and dtype_of(moment_key(name, key)) != dtype_of(key):
            return moment_key(name, key)
    return None


def read_logical(ckpt: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(params, moments) of a checkpoint; ``moments[m][key]`` for m in exp_avg, exp_avg_sq."""
    reader = TensorReader(resolve(ckpt))
    plain = {k: reader.read(k) for k in reader.keys()}
    params = {k: v for k, v in plain.items() if not k.startswith("optimizer.") and not k.endswith("_extra_state")}
    moments: dict[str, dict[str, torch.Tensor]] = {m: {} for m in MOMENTS}
    for m in MOMENTS:
        prefix = moment_key(m, "")
        for k, v in plain.items():
            if k.startswith(prefix):
                moments[m][k[len(prefix) :]] = v
    return params, moments


def layer_rows(key: str) -> Optional[int]:
    """Rows per stored chunk for logical tensor ``key`` (a parameter or moment key): 1 for the
    stacked per-layer tensors (``decoder.layers.*``, stored one layer per chunk as megatron stores
    them, so they can be read back layer by layer), None (one chunk) for the others."""
    param = key
    for m in (*MOMENTS, *MASTER_STORED):
        param = param.removeprefix(moment_key(m, ""))
    return 1 if param.startswith("decoder.layers.") else None


def write_logical_chunks(
    out: str | Path,
    entries: list[ChunkedTensor],
    meta: dict[str, Any] | Callable[[Path], dict[str, Any]],
    *,
    has_moments: bool,
    threads: int = 2,
) -> Path:
    """Write a logical checkpoint whose tensors are produced chunk by chunk (``training.checkpoint.dcp_io``).

    Collective when distributed (every rank passes the same entries; chunks are spread over the
    ranks). ``meta`` is the metadata dict, or a function called with the directory once every tensor
    is written (it may read them back, e.g. to verify) that returns it. Atomic: everything goes to
    ``<out>.partial``, renamed to ``out`` only when complete; ``out`` is never overwritten and no
    partial directory is left when anything fails. ``threads``: writer threads
    (``training.checkpoint.dcp_io.write_tensors``; each holds the chunk it produces).
    """

    def write(partial: Path) -> dict[str, Any]:
        write_tensors(partial, entries, threads=threads)
        return dict(
            meta(partial) if callable(meta) else meta,
            layout={"tp": 1, "pp": 1, "dp": 1},
            has_optimizer=False,
            has_moments=has_moments,
        )

    return write_atomically(out, write)


def write_logical(
    out: str | Path,
    params: dict[str, torch.Tensor],
    meta: dict[str, Any] | Callable[[Path], dict[str, Any]],
    moments: Optional[dict[str, dict[str, torch.Tensor]]] = None,
) -> Path:
    """Write a checkpoint from full tensors (collective). Atomic; never overwrites. ``meta`` as in
    ``write_logical_chunks`` (a function may add files to the directory: they join the manifest)."""
    entries = [in_memory(k, v.contiguous(), layer_rows(k)) for k, v in params.items()]
    for m, tensors in (moments or {}).items():
        entries += [in_memory(moment_key(m, k), v.contiguous(), layer_rows(k)) for k, v in tensors.items()]
    return write_logical_chunks(out, entries, meta, has_moments=bool(moments))
