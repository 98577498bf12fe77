"""Atomic checkpoint directories: the write protocol every checkpoint writer goes through.

Contracts:
- Files go to ``<final>.partial``; the directory is renamed to ``final`` only after every rank
  finished, and ``latest`` is replaced atomically afterwards. A crash mid-save leaves the previous
  checkpoint and ``latest`` untouched; a stale ``.partial`` directory is removed by the next save.
- An existing complete checkpoint is never overwritten.
- ``flm_checkpoint.json`` records the size and hash of every other file (``files``, ``hash_algo``;
  ``training.checkpoint.integrity``), computed before the rename, so loads can verify them. Every
  rank hashes its share of the files (``manifest_collective``); rank 0 writes the manifest and commits.
- A full disk is reported as such (``DiskFullError``, naming the directory); the previous
  checkpoint and ``latest`` stay valid.
- Pruning (``keep_last``) keeps the newest ``keep_last`` checkpoints whose files have their recorded
  sizes and removes only older ones: a damaged checkpoint never displaces the last good one.

Collective over all ranks of the initialized process group (callers start it; nothing here does).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist

from training.checkpoint.integrity import HASH_ALGO, is_intact, manifest_collective, step_dirs
from training.checkpoint.meta import FORMAT_VERSION, LATEST_FILE, META_FILE, CheckpointError, step_dir_name

#: below this many free bytes a failed write is taken for a full disk even when the error does not say so
#: (megatron's writer processes report a short write as "unexpected pos ...")
LOW_SPACE_BYTES = 16 << 20


class DiskFullError(CheckpointError):
    """No space left while writing a checkpoint (the message names the directory)."""


def _is_disk_full(err: BaseException, where: Path) -> bool:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    try:
        return shutil.disk_usage(where).free < LOW_SPACE_BYTES
    except OSError:
        return False


def _disk_full(where: Path) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(
        f"disk full while writing a checkpoint into {where} ({free}); the previous checkpoint is intact: "
        "free space (or lower checkpoint.keep_last, or set checkpoint.dir elsewhere) and resume with --resume"
    )


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def write_atomically(
    final: str | Path, write: Callable[[Path], dict[str, Any]], *, remove_partial_on_error: bool = True
) -> Path:
    """The atomic directory protocol of every checkpoint writer (collective over all ranks).

    ``write(partial)`` writes the files (collectively) into ``<final>.partial`` and returns the
    metadata; every rank hashes its share of the files (``manifest_collective``), rank 0 then adds
    ``flm_checkpoint.json`` (with the format version and the manifest) and renames the directory to
    ``final``. ``final`` is never overwritten. If ``write`` raises, the partial
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
        files = manifest_collective(partial, HASH_ALGO)  # every rank hashes its share; all get the manifest
        if _rank0():
            meta = dict(meta, format_version=FORMAT_VERSION, hash_algo=HASH_ALGO, files=files)
            _write_durably(partial / META_FILE, json.dumps(meta, indent=2))
    except BaseException as err:
        if remove_partial_on_error and _rank0():
            shutil.rmtree(partial, ignore_errors=True)
        # (torch's CheckpointException, what megatron's writer failures arrive as, is a BaseException)
        if not isinstance(err, (KeyboardInterrupt, SystemExit, CheckpointError)) and _is_disk_full(err, partial.parent):
            if _rank0():  # the partial files only take the space a retry needs
                shutil.rmtree(partial, ignore_errors=True)
            raise _disk_full(partial.parent) from err
        raise
    if _rank0():
        os.replace(partial, final)
    _barrier()
    return final


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def commit(
    root: str | Path,
    step: int,
    write: Callable[[Path], None],
    meta: dict[str, Any],
    layout,
    keep_last: Optional[int] = None,
) -> Path:
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
    """Remove checkpoints older than the newest ``keep_last`` ones that pass the size check."""
    steps = [p for _, p in step_dirs(root)]
    good = [p for p in steps if is_intact(p, check_hash=False)]
    if not good:
        return
    oldest_kept = good[-keep_last:][0]
    for old in steps[: steps.index(oldest_kept)]:
        shutil.rmtree(old, ignore_errors=True)
