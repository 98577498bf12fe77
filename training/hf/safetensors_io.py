"""Sharded safetensors in the Hugging Face layout.

``write_shards(tensors, out_dir, max_shard_bytes)``: one ``model.safetensors`` when everything fits
in one shard, else ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {name: file}}``). Tensors are written in the
given order and a shard is closed before it would exceed ``max_shard_bytes`` (a single larger
tensor gets a shard of its own). Every file carries ``{"format": "pt"}``, which transformers checks.

``read_tensors(hf_dir)``: all tensors of such a directory (either layout).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training.hf.errors import HFInteropError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


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


def write_shards(tensors: dict[str, torch.Tensor], out_dir: Path, max_shard_bytes: int) -> list[str]:
    """Write ``tensors`` (independent, contiguous copies are made) into ``out_dir``; returns the files."""

    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = t.detach().contiguous().clone()
        size += nbytes
    if len(groups) == 1:
        save_file(groups[0], str(out_dir / SINGLE), metadata={"format": "pt"})
        return [SINGLE]
    files, weight_map = [], {}
    for i, group in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(out_dir / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in group})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out_dir / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return files + [INDEX]


def read_tensors(hf_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``hf_dir`` (single file or index + shards); HFInteropError naming what is missing."""

    if (hf_dir / INDEX).is_file():
        weight_map = json.loads((hf_dir / INDEX).read_text()).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (hf_dir / f).is_file()]
        if missing:
            raise HFInteropError(
                f"{hf_dir / INDEX} lists {missing[:3]}, which are missing; copy the complete model directory"
            )
    elif (hf_dir / SINGLE).is_file():
        files = [SINGLE]
    else:
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
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(hf_dir / f)))
    return out
