"""Sharded safetensors in the Hugging Face layout, written and read one tensor at a time.

``write_shards(planned, out_dir, max_shard_bytes)``: ``planned`` maps each tensor name to a
:class:`Planned` (shape, dtype, and a function that produces the tensor when its turn comes). The
split into files is huggingface_hub's ``split_torch_state_dict_into_shards`` (run on meta tensors, so
planning needs no memory): one ``model.safetensors`` when everything fits in ``max_shard_bytes``, else
``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {name: file}}``, what
``huggingface_hub.save_torch_state_dict`` writes). A tensor larger than ``max_shard_bytes`` gets a file
of its own. Every file carries ``{"format": "pt"}``, which transformers checks. Memory: one produced
tensor at a time (it is dropped once its bytes are written).

``HFWeights(hf_dir)``: the tensors of such a directory (either layout) by name, with their shapes and
dtypes from the file headers; ``get(name)`` reads that one tensor (``safetensors.safe_open``, the file
opened for that read only, so no mapping of a whole shard stays resident).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open

from training.hf.errors import HFInteropError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
#: the safetensors header's dtype names (the export dtypes; see the format's specification)
DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def parse_size(text: str) -> int:
    """``"2GB"``, ``"500MB"``, ``"64KiB"``, ``"1000"`` -> bytes (decimal units; ``i`` forms binary)."""
    units = {
        "": 1,
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    s = text.strip().upper()
    number = s.rstrip("KMGTIB")
    try:
        value = float(number) * units[s[len(number) :]]
    except (ValueError, KeyError):
        raise HFInteropError(f"--max-shard-size {text!r} is not a size; use e.g. 2GB, 500MB or 64KiB") from None
    if value < 1:
        raise HFInteropError(f"--max-shard-size {text!r} must be positive")
    return int(value)


@dataclass(frozen=True)
class Planned:
    """A tensor to write: its shape and dtype, and ``produce()``, called once when it is written."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def shard_files(planned: dict[str, Planned], max_shard_bytes: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """(file -> its tensor names in write order, the index's ``metadata``), split by huggingface_hub.

    Meta tensors stand in for the data: the splitter only needs each tensor's byte size (a meta
    tensor has no storage to share, so none is grouped as tied)."""
    meta = {name: torch.empty(p.shape, dtype=p.dtype, device="meta") for name, p in planned.items()}
    split = split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_bytes)
    return dict(split.filename_to_tensors), dict(split.metadata)


def write_shards(planned: dict[str, Planned], out_dir: Path, max_shard_bytes: int) -> list[str]:
    """Write ``planned`` into ``out_dir`` (see the module docstring); returns the files written."""
    files, metadata = shard_files(planned, max_shard_bytes)
    for name, names in files.items():
        write_safetensors(out_dir / name, {n: planned[n] for n in names})
    if len(files) == 1:
        return list(files)
    weight_map = {n: f for f, names in files.items() for n in names}
    (out_dir / INDEX).write_text(json.dumps({"metadata": metadata, "weight_map": weight_map}, indent=2))
    return [*files, INDEX]


def write_safetensors(path: Path, planned: dict[str, Planned]) -> None:
    """One safetensors file, its tensors produced and written one at a time, in ``planned``'s order.

    Written by hand because the safetensors library has no incremental writer: ``save_file`` and
    ``serialize_file`` take every tensor of a file at once, i.e. a whole shard in memory. The format
    (its specification, github.com/huggingface/safetensors) is small: an 8-byte little-endian header
    length, the JSON header (``__metadata__`` and, per tensor, ``dtype``, ``shape`` and
    ``data_offsets`` into the data buffer; padded with spaces to a multiple of 8 bytes, as the
    library pads it), then the tensors' little-endian bytes back to back. Tests read these files
    with safetensors and transformers."""
    if sys.byteorder != "little":
        raise HFInteropError("safetensors files are little-endian; export on a little-endian machine")
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, p in planned.items():
        if p.dtype not in DTYPE_NAMES:
            raise HFInteropError(f"internal: {name} has dtype {p.dtype}, which exports do not write")
        header[name] = {
            "dtype": DTYPE_NAMES[p.dtype],
            "shape": list(p.shape),
            "data_offsets": [offset, offset + p.nbytes],
        }
        offset += p.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, p in planned.items():
            t = p.produce()
            if tuple(t.shape) != p.shape or t.dtype != p.dtype:
                raise HFInteropError(
                    f"internal: {name} was produced as {tuple(t.shape)} {t.dtype}, planned as {p.shape} {p.dtype}"
                )
            t = t.detach().cpu().contiguous()
            # the tensor's own bytes (a view shares its base's storage; only its elements are written)
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)
            del t


class HFWeights:
    """The safetensors tensors of a Hugging Face model directory (single file or index + shards)."""

    def __init__(self, hf_dir: Path) -> None:
        self.hf_dir = hf_dir
        self._file: dict[str, Path] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        for f in self._files():
            with safe_open(str(f), framework="pt") as handle:
                for name in handle.keys():
                    piece = handle.get_slice(name)
                    self._file[name] = f
                    self._shape[name] = tuple(piece.get_shape())

    def _files(self) -> list[Path]:
        hf_dir = self.hf_dir
        if (hf_dir / INDEX).is_file():
            weight_map = json.loads((hf_dir / INDEX).read_text()).get("weight_map", {})
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (hf_dir / f).is_file()]
            if missing:
                raise HFInteropError(
                    f"{hf_dir / INDEX} lists {missing[:3]}, which are missing; copy the complete model directory"
                )
            return [hf_dir / f for f in files]
        if (hf_dir / SINGLE).is_file():
            return [hf_dir / SINGLE]
        other = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(p.name for p in hf_dir.glob("*.pt"))
        hint = (
            (
                f" It has {other[:3]}: pickled weights are not read (they can run code); re-save them with "
                "model.save_pretrained(dir, safe_serialization=True)"
            )
            if other
            else ""
        )
        raise HFInteropError(f"{hf_dir} has no {SINGLE} or {INDEX}.{hint}")

    def keys(self) -> Iterator[str]:
        return iter(self._file)

    def __contains__(self, name: str) -> bool:
        return name in self._file

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape[name]

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (a copy in memory; the file is mapped only during the read)."""
        with safe_open(str(self._file[name]), framework="pt") as handle:
            return handle.get_tensor(name)
