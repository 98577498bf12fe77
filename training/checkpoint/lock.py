"""One job per run directory: a lock file, and the refusal to train into a used output_dir.

``RunLock`` takes an exclusive ``flock`` on ``<output_dir>/.flm.lock`` (held by the job's rank 0 for
the whole run; the kernel releases it when the process dies, also on kill -9, so a crashed job
never leaves a stale lock). A second job on the same directory refuses to start, naming the
holder's host and pid. ``flock`` is per host on most network file systems: on a cluster, a
scheduler dependency (``--dependency=singleton``) is the cross-node guarantee.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Optional

from training.checkpoint.integrity import step_dirs
from training.checkpoint.meta import LATEST_FILE, CheckpointError

LOCK_FILE = ".flm.lock"


class RunLockedError(CheckpointError):
    """Another job holds the run directory's lock."""


class RunLock:
    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another job ({holder}); wait for it to end or stop it, "
                "or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_if_rank0(output_dir: str | Path) -> Optional[RunLock]:
    """The run's lock, taken by the job's first process (``RANK`` 0 or unset); None on other ranks."""
    if os.environ.get("RANK", "0") != "0":
        return None
    return RunLock(output_dir).acquire()


def refuse_used(checkpoint_root: str | Path, output_dir: str | Path) -> None:
    """A fresh (not ``--resume``) run must not train into a directory that holds a run already."""
    root = Path(checkpoint_root)
    if step_dirs(root) or (root / LATEST_FILE).exists() or (Path(output_dir) / "metrics.jsonl").exists():
        raise CheckpointError(
            f"{output_dir} already holds a run (checkpoints in {root} or metrics.jsonl); pass --resume to "
            "continue it, or choose a new output_dir"
        )
