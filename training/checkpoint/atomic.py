"""Atomic checkpoint directories: the write protocol every checkpoint writer goes through.

Contracts:
- Files go to ``<final>.partial``; the directory is renamed to ``final`` only after every rank
  finished, and ``latest`` is replaced atomically afterwards. A crash mid-save leaves the previous
  checkpoint and ``latest`` untouched; a stale ``.partial`` directory is removed by the next save.
- An existing complete checkpoint is never overwritten.

Collective over all ranks of the initialized process group (callers start it; nothing here does).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

import torch.distributed as dist

from training.checkpoint.meta import (FORMAT_VERSION, LATEST_FILE, META_FILE, CheckpointError, is_checkpoint,
                                      step_dir_name)


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


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
    _barrier()
    try:
        meta = write(partial)
        _barrier()
    except BaseException:
        if remove_partial_on_error and _rank0():
            shutil.rmtree(partial, ignore_errors=True)
        raise
    if _rank0():
        (partial / META_FILE).write_text(json.dumps(dict(meta, format_version=FORMAT_VERSION), indent=2))
        os.replace(partial, final)
    _barrier()
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
    _barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir() and is_checkpoint(p))
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
