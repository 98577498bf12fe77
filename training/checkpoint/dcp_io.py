"""Tensor-at-a-time I/O on megatron ``torch_dist`` checkpoints (torch DCP files + megatron's config).

A megatron-core ``torch_dist`` checkpoint is a torch.distributed.checkpoint (DCP) directory
(``.metadata`` + ``__<rank>_<n>.distcp``) plus megatron's ``metadata.json`` (backend names) and
``common.pt`` (the non-tensor state). Each tensor is stored as chunks of its global ("logical")
shape; the chunks are whatever the saving layout held per rank (a training checkpoint stores every
layer of ``decoder.layers.*`` as its own chunk, TP ranks add column/row splits).

Why this module exists next to megatron's API: ``dist_checkpointing.load_plain_tensors`` loads every
tensor of a checkpoint at once, and ``dist_checkpointing.save`` resolves (and copies) every tensor of
the state dict before it writes, so growing a checkpoint through them holds the old and the grown
model in memory together. Here:

- ``TensorReader(path)`` reads the DCP metadata once; ``read(key, start, length)`` returns rows
  ``[start, start + length)`` of dim 0 of one tensor (default: all of it), reading only the stored
  chunks that overlap the rows (DCP's own resharding: ``create_read_items_for_chunk_list`` and
  ``FileSystemReader.read_data``). Memory: the rows asked for plus one stored chunk at a time.
- ``write_tensors(out, entries, common)`` writes a checkpoint megatron's ``dist_checkpointing.load``
  reads under any layout. Each entry (``ChunkedTensor``) declares its shape and how it is cut along
  dim 0; a chunk is *produced* only when DCP's writer asks for it (``SavePlanner.resolve_data``), is
  written and dropped, so memory stays at about one chunk. Under ``torch.distributed`` with several
  ranks, every rank declares every chunk and DCP's plan deduplication spreads them over the ranks by
  size: each rank produces and writes only its share, in parallel.

Both sides are plain torch DCP, so the files are exactly what megatron's ``torch_dist`` strategy
reads; the tests load them with megatron under other layouts.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint import save as dcp_save
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo  # the per-item record DCP's reader expects
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from training.checkpoint.meta import CheckpointError

#: megatron's names (megatron.core.dist_checkpointing.core / strategies.common)
MEGATRON_CONFIG_FILE = "metadata.json"
MEGATRON_COMMON_FILE = "common.pt"
#: what megatron's ``save_config(CheckpointingConfig("torch_dist"), dir)`` writes (the backend names
#: its loader dispatches on); written here so this layer needs no megatron import
MEGATRON_CONFIG = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}


class CheckpointFormatError(CheckpointError):
    """The directory is not a readable torch_dist checkpoint, or a tensor is not in it."""


# ----------------------------------------------------------------------------------------------- reading
class _IntoTensor(LoadPlanner):
    """Load planner that copies the read pieces into one preallocated tensor ``out`` (the one
    requested chunk; read items' ``dest_offsets`` are relative to it). ``TensorReader`` hands
    ``FileSystemReader.read_data`` a ready plan of tensor items, so only the two calls it makes per
    item are needed (``LoadPlanner`` does not enforce its planning methods)."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        view = self.out
        for dim, (offset, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
            view = view.narrow(dim, offset, length)
        return view

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        pass  # resolve_tensor returned a view of ``out``: the data is already in place


class TensorReader:
    """Random access to the tensors of one torch_dist checkpoint directory (any saving layout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / ".metadata").is_file():
            raise CheckpointFormatError(f"{self.path} is not a torch_dist checkpoint (no .metadata file)")
        self._reader = FileSystemReader(str(self.path))
        metadata = self._reader.read_metadata()
        self._reader.set_up_storage_reader(metadata, True)
        self._tensors: dict[str, TensorStorageMetadata] = {
            k: md for k, md in metadata.state_dict_metadata.items() if isinstance(md, TensorStorageMetadata)
        }

    def keys(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def _md(self, key: str) -> TensorStorageMetadata:
        try:
            return self._tensors[key]
        except KeyError:
            raise CheckpointFormatError(f"{self.path} has no tensor {key!r}") from None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._md(key).size)

    def dtype(self, key: str) -> torch.dtype:
        return self._md(key).properties.dtype

    def stored_rows(self, key: str) -> int:
        """The most rows (dim 0) any stored chunk of ``key`` spans: 1 means row reads touch one row's
        data; a larger value means a row read loads (and discards) up to that many rows."""
        md = self._md(key)
        return max((c.sizes[0] for c in md.chunks), default=0) if len(md.size) else 1

    def read(self, key: str, start: int = 0, length: Optional[int] = None) -> torch.Tensor:
        """Rows ``[start, start + length)`` of dim 0 of ``key`` (default: the whole tensor), shape
        ``[length, *shape[1:]]``; a 0-d tensor is read whole."""
        md = self._md(key)
        size = tuple(md.size)
        if not size:
            start, length, sizes, offsets = 0, None, (), ()
        else:
            length = size[0] - start if length is None else length
            if start < 0 or length < 0 or start + length > size[0]:
                raise CheckpointFormatError(f"{key}: rows [{start}, {start + length}) are outside its {size[0]} rows")
            sizes, offsets = (length, *size[1:]), (start,) + (0,) * (len(size) - 1)
        whole = next((c for c in md.chunks if tuple(c.offsets) == offsets and tuple(c.sizes) == sizes), None)
        if whole is not None:
            direct = self._read_stored(key, whole)
            if direct is not None:
                return direct
        out = torch.empty(sizes, dtype=md.properties.dtype)
        if out.numel() == 0:
            return out
        items = create_read_items_for_chunk_list(
            key, md, [ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))]
        )
        covered = sum(math.prod(i.lengths) for i in items)
        if covered != out.numel():
            raise CheckpointFormatError(
                f"{self.path}: the stored chunks of {key} do not cover rows "
                f"[{start}, {start + (length or 0)}) (checkpoint incomplete?)"
            )
        self._reader.read_data(LoadPlan(items), _IntoTensor(out)).wait()
        return out

    def _read_stored(self, key: str, chunk: ChunkStorageMetadata) -> Optional[torch.Tensor]:
        """A request that is exactly one stored chunk: the chunk as ``torch.load`` returns it, without
        the copy into a separate buffer ``read_data`` makes. None when the item was written with a
        stream transform (then the general path handles it)."""
        info = self._reader.storage_data.get(MetadataIndex(key, chunk.offsets))
        if info is None or info.transform_descriptors:
            return None
        with open(self.path / info.relative_path, "rb") as f:
            # the bounded file view DCP's own read_data loads each item through
            tensor = torch.load(self._reader._slice_file(f, info), map_location="cpu", weights_only=True)
        if tuple(tensor.shape) != tuple(chunk.sizes):
            raise CheckpointFormatError(
                f"{self.path}: stored chunk of {key} at {tuple(chunk.offsets)} has shape "
                f"{tuple(tensor.shape)}, the metadata says {tuple(chunk.sizes)}"
            )
        return tensor


# ----------------------------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class ChunkedTensor:
    """A tensor to write, produced chunk by chunk.

    ``shape``/``dtype``: the global (logical) tensor. It is cut along dim 0 into chunks of
    ``rows`` rows (None: one chunk, the whole tensor; the last chunk may be shorter).
    ``produce(i)`` returns chunk ``i`` (shape ``[rows_i, *shape[1:]]``, dtype ``dtype``); it is
    called once, when the writer needs the chunk, in any order, possibly on another rank.
    """

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[int], torch.Tensor]
    rows: Optional[int] = None

    def chunks(self) -> Iterator[tuple[int, tuple[int, ...], tuple[int, ...]]]:
        """(index, offsets, sizes) of every chunk."""
        if not self.shape or self.rows is None or self.rows >= self.shape[0]:
            yield 0, (0,) * len(self.shape), tuple(self.shape)
            return
        for i, r0 in enumerate(range(0, self.shape[0], self.rows)):
            rows = min(self.rows, self.shape[0] - r0)
            yield i, (r0,) + (0,) * (len(self.shape) - 1), (rows, *self.shape[1:])


def in_memory(key: str, tensor: torch.Tensor, rows: Optional[int] = None) -> ChunkedTensor:
    """A ``ChunkedTensor`` over a tensor that is already in memory."""
    step = rows or (tensor.shape[0] if tensor.dim() else 1)
    return ChunkedTensor(
        key,
        tuple(tensor.shape),
        tensor.dtype,
        lambda i: tensor if tensor.dim() == 0 else tensor[i * step : (i + 1) * step],
        rows,
    )


class _ProducingSavePlanner(DefaultSavePlanner):
    """DCP save planner whose write items come from ``ChunkedTensor`` declarations instead of a
    state dict, and whose data is produced in ``resolve_data`` (called by the storage writer right
    before it serialises the item). The global plan (deduplication across ranks, metadata) is DCP's."""

    def __init__(self, entries: list[ChunkedTensor]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self._entries = {e.key: e for e in entries}
        if len(self._entries) != len(entries):
            raise ValueError("duplicate tensor keys in a checkpoint write")
        self.produced_bytes = 0

    def create_local_plan(self) -> SavePlan:
        items = []
        for e in self._entries.values():
            for _, offsets, sizes in e.chunks():
                items.append(
                    WriteItem(
                        index=MetadataIndex(e.key, torch.Size(offsets)),
                        type=WriteItemType.SHARD,
                        tensor_data=TensorWriteData(
                            chunk=ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes)),
                            properties=TensorProperties(dtype=e.dtype),
                            size=torch.Size(e.shape),
                        ),
                    )
                )
        self.plan = SavePlan(items)
        return self.plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor:
        e = self._entries[write_item.index.fqn]
        offsets = write_item.tensor_data.chunk.offsets
        index = 0 if not e.shape or e.rows is None else offsets[0] // e.rows
        want = tuple(write_item.tensor_data.chunk.sizes)
        t = e.produce(index)
        if tuple(t.shape) != want or t.dtype != e.dtype:
            raise ValueError(
                f"{e.key}: chunk {index} was produced as {tuple(t.shape)} {t.dtype}, expected {want} {e.dtype}"
            )
        self.produced_bytes += t.numel() * t.element_size()
        t = t.detach().cpu().contiguous()
        # torch.save writes a tensor's whole storage: a row of a bigger tensor is copied out first
        return t.clone() if t.untyped_storage().nbytes() != t.nbytes else t


def balanced(sizes: list[int], n: int) -> list[int]:
    """Greedy assignment of items (in order) to ``n`` bins of about equal total size: the bin of each."""
    load = [0] * n
    bins = []
    for size in sizes:
        i = load.index(min(load))
        bins.append(i)
        load[i] += size
    return bins


def _buckets(items: list[WriteItem], n: int) -> list[list[WriteItem]]:
    """``items`` split into at most ``n`` lists of about equal bytes, each in the items' order."""
    sizes = [math.prod(i.tensor_data.chunk.sizes) * i.tensor_data.properties.dtype.itemsize for i in items]
    out: list[list[WriteItem]] = [[] for _ in range(n)]
    for item, b in zip(items, balanced(sizes, n)):
        out[b].append(item)
    return [b for b in out if b]


class _StreamingFileSystemWriter(FileSystemWriter):
    """torch DCP's ``FileSystemWriter`` with a ``write_data`` that keeps nothing it has written.

    torch 2.13's ``_write_files_from_queue`` keeps a reference to every tensor it wrote (for its
    safetensors path, also in torch.save mode), which would hold one chunk of every tensor, i.e.
    about a layer of the whole model, until the file is closed. Here each of ``thread_count``
    threads takes an equal share of the rank's items, and for each item produces it
    (``planner.resolve_data``), writes it with ``torch.save`` as DCP does, and drops it, into its
    own file ``__<rank>_<thread>.distcp``, recording the ``_StorageInfo`` DCP's reader expects. With
    two threads the arithmetic of one chunk overlaps the (kernel-bound) write of another, and at most
    two chunks are alive. Planning, ``.metadata`` and reading are DCP's.
    """

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        if any(item.type == WriteItemType.BYTE_IO for item in plan.items):
            raise CheckpointFormatError("internal: the streaming writer writes tensors only")
        buckets = _buckets(plan.items, self.thread_count)
        results: list[list[WriteResult]] = [[] for _ in buckets]
        errors: list[BaseException] = []
        failed = threading.Event()

        def write_file(i: int) -> None:
            file_name = f"{plan.storage_data.prefix}{i}.distcp"
            try:
                with self.fs.create_stream(self.fs.concat_path(self.path, file_name), "wb") as stream:
                    for item in buckets[i]:
                        if failed.is_set():
                            return
                        tensor = planner.resolve_data(item)
                        offset = stream.tell()
                        torch.save(tensor, stream)
                        del tensor
                        length = stream.tell() - offset
                        results[i].append(
                            WriteResult(
                                index=item.index,
                                size_in_bytes=length,
                                storage_data=_StorageInfo(file_name, offset, length),
                            )
                        )
                    stream.flush()
                    if self.sync_files:
                        os.fsync(stream.fileno())
            except BaseException as err:  # raised in the calling thread below
                failed.set()
                errors.append(err)

        threads = [
            threading.Thread(target=write_file, args=(i,), name=f"flm-ckpt-writer-{i}") for i in range(1, len(buckets))
        ]
        for t in threads:
            t.start()
        if buckets:
            write_file(0)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        fut: Future[list[WriteResult]] = Future()
        fut.set_result([r for rs in results for r in rs])
        return fut


def write_tensors(
    out: str | Path, entries: list[ChunkedTensor], common: Optional[dict[str, Any]] = None, *, threads: int = 2
) -> int:
    """Write ``entries`` as a torch_dist checkpoint into the existing, empty directory ``out``.

    Collective when ``torch.distributed`` is initialised (every rank passes the same entries; the
    chunks are spread over the ranks). ``common``: megatron's common (non-tensor) state dict
    (``common.pt``). ``threads``: writer threads per rank (each produces and writes its share of
    the chunks; ``produce`` must be thread-safe). Files are fsynced. Returns the bytes this rank
    produced.
    """
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    planner = _ProducingSavePlanner(entries)
    writer = _StreamingFileSystemWriter(str(out), single_file_per_rank=True, sync_files=True, thread_count=threads)
    try:
        dcp_save({}, storage_writer=writer, planner=planner, no_dist=not distributed)
    except CheckpointException as err:
        # DCP wraps every rank's failure; raise the original one (this rank's if it failed here), so
        # callers see e.g. the GrowthError of a chunk, not a traceback dump
        rank = dist.get_rank() if distributed else 0
        failed = err.failures.get(rank) or next(iter(err.failures.values()), None)
        if failed is None:
            raise
        raise failed[0] from None
    rank0 = not distributed or dist.get_rank() == 0
    if rank0:
        (Path(out) / MEGATRON_CONFIG_FILE).write_text(json.dumps(MEGATRON_CONFIG))
        torch.save(common or {}, Path(out) / MEGATRON_COMMON_FILE)
    if distributed:
        dist.barrier()
    return planner.produced_bytes
