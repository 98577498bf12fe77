"""Checkpoint integrity: the size and hash of every file, recorded at save, verified at load.

``flm_checkpoint.json`` carries ``files``: ``{relative path: {"size": bytes, "<algo>": hexdigest}}``
for every other file of the checkpoint directory and ``hash_algo`` (xxh3_128 when the ``xxhash``
package is installed, else sha256). ``training.checkpoint.atomic.write_atomically`` computes it
once all ranks have written, before the directory is renamed into place, so a complete checkpoint
always has its manifest: :func:`manifest_collective` spreads the hashing over the ranks (each
hashes its share of the files, dealt out by size as loading deals them; the records are gathered
and every rank gets the whole manifest, the one :func:`manifest` computes in a single process).
:func:`verify` checks sizes (always, cheap) and hashes (by default; files are hashed in parallel
threads, both hash functions release the GIL).

Loading verifies while it reads: :func:`load_verified` (an explicit checkpoint) and
:func:`resume_verified` (a resume) check sizes first, then run the caller's load while background
threads — on every rank, each hashing its share of the files — compute the hashes; the verdict is
agreed before training goes on, so a damaged checkpoint is still refused (or, on resume, replaced by
the newest one that verifies) and nothing loaded from it is used. Resuming takes the checkpoint
named by ``latest`` and otherwise falls back to the newest ``step_N`` that verifies, naming what
was wrong; checkpoints newer than the one chosen are moved aside (``step_N.damaged``) so the
resumed run can write its own ``step_N`` again. :func:`find_resumable` and
:func:`verify_collective` are the same without a load.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import mmap
import os
import re
from collections.abc import Callable, Iterator
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
#: bytes of a file mapped at a time while hashing it (a multiple of mmap.ALLOCATIONGRANULARITY)
_WINDOW = 64 << 20
DAMAGED_SUFFIX = ".damaged"


def _hasher(algo: str):
    if algo == "xxh3_128":
        if xxhash is None:
            raise CheckpointError("this checkpoint's files are hashed with xxh3_128; install the xxhash package")
        return xxhash.xxh3_128()
    return hashlib.new(algo)


def file_hash(path: Path, algo: str = HASH_ALGO) -> str:
    """The hex digest of a file. The file is mapped and hashed in windows of ``_WINDOW`` bytes, each
    in one call, which runs without the GIL from start to end (page faults included): a thread
    hashing alongside a loader that holds the GIL often then never waits for it, where a
    read-and-update loop would wait at every chunk. Each window is unmapped before the next is
    mapped: pages of a mapping count in the process's resident set, so mapping a whole file would
    show the file's size as resident memory (a 4 GB import showed a 4.9 GB peak RSS)."""
    h = _hasher(algo)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            for start in range(0, size, _WINDOW):
                with mmap.mmap(f.fileno(), min(_WINDOW, size - start), offset=start, access=mmap.ACCESS_READ) as m:
                    if hasattr(m, "madvise"):
                        m.madvise(mmap.MADV_SEQUENTIAL)
                    h.update(m)
        except (ValueError, OSError):  # a filesystem that cannot map: read it
            h = _hasher(algo)
            f.seek(0)
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


def _hash_share(directory: Path, names: list[str], algo: str, threads: int) -> dict[str, str]:
    """``{name: digest}`` of ``names`` under ``directory``, the largest files first (see PendingHashes)."""
    with ThreadPoolExecutor(max(1, min(len(names), threads)), thread_name_prefix="flm-hash") as pool:
        futures = {n: pool.submit(file_hash, directory / n, algo) for n in names}
        return {n: f.result() for n, f in futures.items()}


def manifest_collective(directory: str | Path, algo: str = HASH_ALGO) -> dict[str, dict[str, Any]]:
    """:func:`manifest` computed by all ranks together (collective when a process group is
    initialized; a plain process computes it alone); every rank returns the whole manifest.

    Rank 0 lists the files and their sizes and tells the others; each rank hashes its share
    (:func:`_deal`, the byte-balanced split loading uses) in background threads; the digests are
    gathered on every rank. The result equals :func:`manifest`'s (same files, sizes and hashes, in
    the same order). A file that cannot be hashed is a one-line :class:`CheckpointError` on every
    rank, naming the rank and the file. Callers run it once every rank has finished writing.
    """
    directory = Path(directory)
    rank, world = _dist()
    _hasher(algo)  # an unavailable algorithm is a one-line error before anything is read
    listing: list[Any] = [None]
    if rank == 0:
        listing = [{n: (directory / n).stat().st_size for n in _files(directory)}]
    if world > 1:
        dist.broadcast_object_list(listing, src=0)
    sizes: dict[str, int] = listing[0]
    mine = _deal(sizes, rank, world)
    record: tuple[dict[str, str], Optional[str]]
    try:
        record = (_hash_share(directory, mine, algo, _hash_threads(world)), None)
    except Exception as err:  # reported on every rank below, so no rank waits for a record that never comes
        what = err.filename if isinstance(err, OSError) and err.filename else f"its share of {directory}"
        why = err.strerror if isinstance(err, OSError) and err.strerror else f"{err.__class__.__name__}: {err}"
        record = ({}, f"rank {rank} could not hash {what} ({why})")
    log.debug("rank %d hashed %d files (%d bytes) of %s", rank, len(mine), sum(sizes[n] for n in mine), directory)
    records = [record]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, record)
        records = gathered
    digests: dict[str, str] = {}
    for part, error in records:
        if error is not None:
            raise CheckpointError(f"cannot record the checkpoint's file hashes: {error}")
        digests.update(part)
    missing = sorted(set(sizes) - set(digests))
    if missing:  # a bug, not bad input: every file is dealt to exactly one rank
        raise RuntimeError(f"{directory}: no rank hashed {missing[0]}")
    return {n: {"size": sizes[n], algo: digests[n]} for n in sizes}


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


def _check_sizes(path: Path) -> tuple[dict[str, Any], Optional[dict[str, Any]], str]:
    """The cheap part of :func:`verify`: metadata readable, every recorded file present with its
    size, nothing unexpected. Returns (metadata, manifest or None for a pre-manifest checkpoint, algo)."""
    meta = load_meta(path)
    files = meta.get("files")
    if files is None:
        return meta, None, HASH_ALGO
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
    return meta, files, algo


class PendingHashes:
    """Hashes of some of a checkpoint's files, computed by background threads while the caller goes
    on (typically: loads the checkpoint). Both hash functions release the GIL on large buffers and
    file reads do too, so the threads run alongside the loader. :meth:`problem` waits for them."""

    def __init__(self, path: Path, files: dict[str, Any], algo: str, names: list[str], threads: int):
        self.path = path
        self._expected = {n: files[n][algo] for n in names}
        self._algo = algo
        self._order = {n: i for i, n in enumerate(files)}
        self._pool = ThreadPoolExecutor(max(1, min(len(names), threads)), thread_name_prefix="flm-hash")
        # the largest files first: the pool's last thread to finish is not the one that got the big file late
        by_size = sorted(names, key=lambda n: -files[n]["size"])
        self._futures = {n: self._pool.submit(file_hash, path / n, algo) for n in by_size}

    def cancel(self) -> None:
        """Drop the hashes not started yet and wait for the running ones (an interrupted load)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def problem(self) -> tuple[int, Optional[str]]:
        """Wait for the hashes; (manifest index, one-line message) of the first file (in manifest
        order) whose hash differs from the recorded one, or ``(-1, None)`` when all match."""
        try:
            for name in sorted(self._futures, key=self._order.__getitem__):
                try:
                    digest = self._futures[name].result()
                except OSError as err:
                    return self._order[name], f"{self.path}: file {name} cannot be read ({err.strerror or err})"
                if digest != self._expected[name]:
                    return self._order[name], (
                        f"{self.path}: file {name} is damaged ({self._algo} differs from the one recorded at save)"
                    )
            return -1, None
        finally:
            self.cancel()


def _deal(sizes: dict[str, int], rank: int, world: int) -> list[str]:
    """The files rank ``rank`` of ``world`` hashes, of the files ``{name: size}``: dealt out by size,
    largest first, each to the rank with the fewest bytes so far (the same split on every rank;
    a heap keeps it O(files x log ranks) for thousands of files over hundreds of ranks)."""
    names = sorted(sizes, key=lambda n: (-sizes[n], n))
    heap = [(0, r) for r in range(world)]  # (bytes so far, rank): the lightest rank, lowest index on ties
    mine = []
    for n in names:
        load, r = heapq.heappop(heap)
        heapq.heappush(heap, (load + sizes[n], r))
        if r == rank:
            mine.append(n)
    return mine


def _share(files: dict[str, Any], algo: str, rank: int, world: int) -> list[str]:
    """The files of manifest ``files`` that rank ``rank`` of ``world`` hashes while loading: the
    hashed files dealt out by size (:func:`_deal`, the split saving uses too)."""
    return _deal({n: e["size"] for n, e in files.items() if algo in e}, rank, world)


def _hash_threads(world: int) -> int:
    """Hash threads of one rank: the node's cores shared by the ranks on it, at most 16."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if world > 1 else 1
    return min(16, max(1, (os.cpu_count() or 1) // max(1, local)))


def _start_hashes(path: Path, files: dict[str, Any], algo: str, rank: int, world: int) -> PendingHashes:
    _hasher(algo)  # an unavailable algorithm is a one-line error before any thread starts
    return PendingHashes(path, files, algo, _share(files, algo, rank, world), _hash_threads(world))


def start_verify(path: str | Path, *, check_hash: bool = True) -> tuple[dict[str, Any], Optional[PendingHashes]]:
    """Check sizes now (a one-line :class:`CheckpointError` on the first problem) and start hashing
    the files in background threads; returns the metadata and the pending hashes (None: hashes off,
    or a checkpoint without manifest). :func:`verify` is this and a wait."""
    path = Path(path)
    meta, files, algo = _check_sizes(path)
    if not check_hash or files is None:
        return meta, None
    return meta, _start_hashes(path, files, algo, 0, 1)


def verify(path: str | Path, *, check_hash: bool = True) -> dict[str, Any]:
    """Check a checkpoint directory against its manifest; returns its metadata.

    Raises a one-line :class:`CheckpointError` naming the first problem: a corrupt or missing
    ``flm_checkpoint.json``, a missing, truncated, grown or changed file, or an unexpected one.
    Checkpoints written before manifests existed pass with their metadata readable (nothing to check).
    """
    meta, pending = start_verify(path, check_hash=check_hash)
    if pending is not None:
        _, problem = pending.problem()
        if problem:
            raise CheckpointError(problem)
    return meta


def is_intact(path: Path, *, check_hash: bool) -> bool:
    try:
        verify(path, check_hash=check_hash)
        return True
    except CheckpointError:
        return False


def _dist() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _load_while_hashing(path: Path, load: Callable[[Path], Any], check_hash: bool) -> Optional[str]:
    """``load(path)`` on every rank while the ranks hash their shares of its files (collective);
    returns the first damaged file's message (the same on every rank), or None when all match.

    A damaged file can also break the reader before the hashes are done: the load's exception then
    gives way to the damage the hashes name (the caller falls back or refuses in one line). A load
    that fails on an intact checkpoint raises its own error on the ranks where it failed, and a
    one-line :class:`CheckpointError` naming them on the others.
    """
    if not check_hash:
        load(path)
        return None
    rank, world = _dist()
    # rank 0 checked the sizes; every rank reads the manifest for its share of the hashing
    meta = load_meta(path)
    files = meta.get("files")
    if files is None:  # written before manifests existed: nothing to check
        load(path)
        return None
    pending = _start_hashes(path, files, meta.get("hash_algo", HASH_ALGO), rank, world)
    failure: Optional[BaseException] = None
    try:
        load(path)
    except Exception as err:  # decided below, once the hashes say whether the files were damaged
        failure = err
    except BaseException:
        pending.cancel()
        raise
    index, problem = pending.problem()
    verdicts = [(index, problem, failure is not None)]
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, verdicts[0])
        verdicts = gathered
    damaged = sorted((i, p) for i, p, _ in verdicts if p is not None)
    if damaged:
        return damaged[0][1]
    if failure is not None:
        raise failure
    failed = [r for r, (_, _, f) in enumerate(verdicts) if f]
    if failed:
        raise CheckpointError(f"{path}: loading failed on rank(s) {failed} (see their error); the files verify")
    return None


_EXPLICIT = "; pass another checkpoint, or --resume without a path to use the newest one that verifies"


def load_verified(path: str | Path, load: Callable[[Path], Any], *, check_hash: bool = True) -> None:
    """Verify checkpoint ``path`` and ``load`` it (collective when distributed): sizes first (rank 0,
    its verdict on every rank), then ``load(path)`` on every rank while the ranks hash their shares of
    the files. A damaged checkpoint is refused with one line, no fallback (an explicit checkpoint);
    what ``load`` did with the damaged files is never used (the caller stops)."""
    path = Path(path)
    error: list[Any] = [None]
    rank, world = _dist()
    if rank == 0:
        try:
            _check_sizes(path)
        except CheckpointError as err:
            error = [str(err)]
    if world > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is None:
        error[0] = _load_while_hashing(path, load, check_hash)
    if error[0]:
        raise CheckpointError(error[0] + _EXPLICIT)


def verify_collective(path: str | Path, *, check_hash: bool = True) -> None:
    """:func:`load_verified` without a load: the hashes are waited for at once."""
    load_verified(path, lambda _: None, check_hash=check_hash)


def _candidates(root: Path, problems: list[str]) -> Iterator[Path]:
    """The checkpoints under ``root`` a resume may continue from, in order (the one ``latest`` names,
    then every ``step_N``, newest first), each passing the size check; the problems of the others
    are appended to ``problems`` on the way."""
    tried = None
    latest = root / LATEST_FILE
    if latest.is_file():
        target = root / latest.read_text().strip()
        if not target.is_dir():
            problems.append(f"{latest} names {target.name}, which does not exist")
        else:
            tried = target
            try:
                _check_sizes(target)
                yield target
            except CheckpointError as err:
                problems.append(str(err))
    for _, path in reversed(step_dirs(root)):
        if path == tried:
            continue
        try:
            _check_sizes(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        yield path


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


def _fall_back(root: Path, path: Path, problems: list[str]) -> None:
    """Name what was wrong with the newer checkpoints, move them aside, point ``latest`` at ``path``."""
    for p in problems:
        log.warning("%s", p)
    log.warning("falling back to %s, the newest checkpoint that verifies", path)
    _set_aside_newer(root, path)
    tmp = root / (LATEST_FILE + ".tmp")
    tmp.write_text(path.name + "\n")
    os.replace(tmp, root / LATEST_FILE)


def resume_verified(root: str | Path, load: Callable[[Path], Any], *, check_hash: bool = True) -> Optional[Path]:
    """Resume the run whose checkpoints are under ``root``: ``load`` the checkpoint ``latest`` names
    when it verifies, else the newest ``step_N`` that does (collective when distributed); returns the
    path loaded, or None when ``root`` has no checkpoint at all (nothing loaded).

    Rank 0 picks each candidate by the size check and tells the others; the ranks hash its files
    (each its share, in background threads) while ``load`` reads it, so verifying costs little more
    than the load. A candidate whose hashes differ is dropped, whatever ``load`` did with it, and the
    next one is loaded over it. When the checkpoint loaded is not the one ``latest`` named, each
    problem and the fallback are logged as warnings, the newer directories are moved aside and
    ``latest`` is rewritten. A one-line CheckpointError when checkpoints exist but none verifies.
    """
    root = Path(root)
    rank, world = _dist()
    problems: list[str] = []
    candidates = _candidates(root, problems) if rank == 0 else iter(())
    while True:
        decision: list[Any] = [None, None]
        if rank == 0:
            path = next(candidates, None)
            if path is not None:
                decision = [str(path), None]
            elif problems:
                decision = [
                    None,
                    f"no usable checkpoint under {root}: "
                    + "; ".join(problems)
                    + "; restore a checkpoint from a copy, or start over in a new output_dir",
                ]
        if world > 1:
            dist.broadcast_object_list(decision, src=0)
        if decision[1]:
            raise CheckpointError(decision[1])
        if decision[0] is None:
            return None
        chosen = Path(decision[0])
        problem = _load_while_hashing(chosen, load, check_hash)
        if problem is None:
            break
        problems.append(problem)
    if rank == 0 and problems:
        _fall_back(root, chosen, problems)
    return chosen


def find_resumable(root: str | Path, *, check_hash: bool = True) -> Optional[Path]:
    """The checkpoint a ``--resume`` of the run continues from, verified (hashes waited for at once),
    with :func:`resume_verified`'s fallback (collective when distributed)."""
    return resume_verified(root, lambda _: None, check_hash=check_hash)
