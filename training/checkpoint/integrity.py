"""Checkpoint integrity: the size and hash of every file, recorded at save, verified at load.

``flm_checkpoint.json`` carries ``files``: ``{relative path: {"size": bytes, "<algo>": hexdigest}}``
for every other file of the checkpoint directory and ``hash_algo`` (xxh3_128 when the ``xxhash``
package is installed, else sha256). ``training.checkpoint.atomic.write_atomically`` computes it
once all ranks have written, before the directory is renamed into place, so a complete checkpoint
always has its manifest. :func:`verify` checks sizes (always, cheap) and hashes (by default; files
are hashed in parallel threads, both hash functions release the GIL).

Resuming (:func:`find_resumable`) verifies the checkpoint named by ``latest`` and otherwise falls
back to the newest ``step_N`` that verifies, naming what was wrong; checkpoints newer than the one
chosen are moved aside (``step_N.damaged``) so the resumed run can write its own ``step_N`` again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist

from training.checkpoint.meta import LATEST_FILE, META_FILE, CheckpointError

try:
    import xxhash
except ImportError:  # pragma: no cover - xxhash is a declared dependency; sha256 keeps old installs working
    xxhash = None

log = logging.getLogger(__name__)

HASH_ALGO = "xxh3_128" if xxhash is not None else "sha256"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_CHUNK = 8 << 20
DAMAGED_SUFFIX = ".damaged"


def _hasher(algo: str):
    if algo == "xxh3_128":
        if xxhash is None:
            raise CheckpointError("this checkpoint's files are hashed with xxh3_128; install the xxhash package")
        return xxhash.xxh3_128()
    return hashlib.new(algo)


def file_hash(path: Path, algo: str = HASH_ALGO) -> str:
    h = _hasher(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != META_FILE)


def _threads(n: int) -> int:
    return max(1, min(n, os.cpu_count() or 1, 16))


def manifest(directory: str | Path, algo: str = HASH_ALGO) -> dict[str, dict[str, Any]]:
    """Size and hash of every file under ``directory`` except ``flm_checkpoint.json`` (parallel)."""
    directory = Path(directory)
    names = _files(directory)
    with ThreadPoolExecutor(_threads(len(names))) as pool:
        digests = list(pool.map(lambda n: file_hash(directory / n, algo), names))
    return {n: {"size": (directory / n).stat().st_size, algo: d} for n, d in zip(names, digests)}


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step_N`` directories under ``root`` (complete or not), oldest first."""
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
    return sorted(out)


def load_meta(path: Path) -> dict[str, Any]:
    """The metadata of checkpoint directory ``path``; a damaged file is a one-line CheckpointError."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: {META_FILE} is missing (an incomplete or damaged checkpoint)")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path} is corrupt ({err.__class__.__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is corrupt (not a JSON object)")
    return meta


def verify(path: str | Path, *, check_hash: bool = True) -> dict[str, Any]:
    """Check a checkpoint directory against its manifest; returns its metadata.

    Raises a one-line :class:`CheckpointError` naming the first problem: a corrupt or missing
    ``flm_checkpoint.json``, a missing, truncated, grown or changed file, or an unexpected one.
    Checkpoints written before manifests existed pass with their metadata readable (nothing to check).
    """
    path = Path(path)
    meta = load_meta(path)
    files = meta.get("files")
    if files is None:
        return meta
    algo = meta.get("hash_algo", HASH_ALGO)
    for name, entry in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: file {name} is missing")
        size = f.stat().st_size
        if size != entry["size"]:
            what = "empty" if size == 0 else ("truncated" if size < entry["size"] else "longer than saved")
            raise CheckpointError(f"{path}: file {name} is {what} ({size} bytes, saved {entry['size']})")
    extra = sorted(set(_files(path)) - set(files))
    if extra:
        raise CheckpointError(f"{path}: unexpected file {extra[0]} (not written by the save)")
    if check_hash:
        names = [n for n, e in files.items() if algo in e]
        with ThreadPoolExecutor(_threads(len(names))) as pool:
            digests = list(pool.map(lambda n: file_hash(path / n, algo), names))
        for name, digest in zip(names, digests):
            if digest != files[name][algo]:
                raise CheckpointError(f"{path}: file {name} is damaged ({algo} differs from the one recorded at save)")
    return meta


def is_intact(path: Path, *, check_hash: bool) -> bool:
    try:
        verify(path, check_hash=check_hash)
        return True
    except CheckpointError:
        return False


def _search(root: Path, check_hash: bool) -> tuple[Optional[Path], list[str]]:
    """The checkpoint to resume from under ``root`` and the problems met on the way."""
    problems: list[str] = []
    tried = None
    latest = root / LATEST_FILE
    if latest.is_file():
        target = root / latest.read_text().strip()
        if not target.is_dir():
            problems.append(f"{latest} names {target.name}, which does not exist")
        else:
            tried = target
            try:
                verify(target, check_hash=check_hash)
                return target, problems
            except CheckpointError as err:
                problems.append(str(err))
    for _, path in reversed(step_dirs(root)):
        if path == tried:
            continue
        try:
            verify(path, check_hash=check_hash)
            return path, problems
        except CheckpointError as err:
            problems.append(str(err))
    return None, problems


def _set_aside_newer(root: Path, chosen: Path) -> None:
    """Move ``step_N`` directories newer than ``chosen`` aside, so the resumed run can save them again."""
    step = int(_STEP_DIR.match(chosen.name).group(1))
    for s, path in step_dirs(root):
        if s > step:
            aside = path.with_name(path.name + DAMAGED_SUFFIX)
            n = 1
            while aside.exists():
                aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}{n}")
                n += 1
            os.replace(path, aside)
            log.warning("moved %s aside to %s (kept for inspection; delete it when done)", path, aside.name)


def _decide(root: Path, check_hash: bool) -> tuple[Optional[str], Optional[str]]:
    path, problems = _search(root, check_hash)
    if path is None:
        if problems:
            return None, (
                f"no usable checkpoint under {root}: "
                + "; ".join(problems)
                + "; restore a checkpoint from a copy, or start over in a new output_dir"
            )
        return None, None
    if problems:
        for p in problems:
            log.warning("%s", p)
        log.warning("falling back to %s, the newest checkpoint that verifies", path)
        _set_aside_newer(root, path)
        tmp = root / (LATEST_FILE + ".tmp")
        tmp.write_text(path.name + "\n")
        os.replace(tmp, root / LATEST_FILE)
    return str(path), None


def find_resumable(root: str | Path, *, check_hash: bool = True) -> Optional[Path]:
    """The checkpoint a ``--resume`` of the run continues from (collective when distributed).

    The one named by ``latest`` when it verifies; else the newest ``step_N`` that does (each problem
    and the fallback are logged as warnings; newer directories are moved aside and ``latest`` is
    rewritten). None when ``root`` has no checkpoint at all; a one-line CheckpointError when it has
    some but none verifies. Rank 0 decides and tells the others.
    """
    root = Path(root)
    decision: list[Any] = [None, None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        decision = list(_decide(root, check_hash))
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(decision, src=0)
    path, error = decision
    if error:
        raise CheckpointError(error)
    return Path(path) if path else None


def verify_collective(path: str | Path, *, check_hash: bool = True) -> None:
    """``verify`` on rank 0, its verdict raised on every rank (collective when distributed)."""
    error: list[Any] = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            verify(path, check_hash=check_hash)
        except CheckpointError as err:
            error = [str(err)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0]:
        raise CheckpointError(
            error[0] + "; pass another checkpoint, or --resume without a path to use the newest one that verifies"
        )
