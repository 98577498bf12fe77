"""Child processes that run the project, as tests and benchmarks start them: their environment
(``child_env``) and killing a whole process group (``kill_group``). Shared by ``tests/`` (through
``tests/helpers.py``) and ``bench/`` (``bench/fault_trials.py``), which is why it lives here and not
in ``tests/``."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "child_env", "kill_group"]


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child process that runs the project (``flm``, a launcher, a trial):
    ``base`` (default: this process's), third-party warnings off, one OpenMP thread per process
    (the test machines share a few cores among several processes), the repository first on
    ``PYTHONPATH`` (also when the child runs from another directory), then ``extra``."""
    env = dict(os.environ if base is None else base)
    path = env.get("PYTHONPATH")
    env.update(
        PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    )
    env.update(extra)
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group that ``proc`` leads (started with ``start_new_session=True``): the
    launcher and every process it started, however far down; nothing to do when they are gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
