"""Test helpers shared by every test package: paths, the environment and process groups of child
processes (``child_env``, ``kill_group``: from ``bench/procs.py``, which ``bench/`` scripts use too),
and running the real ``flm`` CLI (in several processes when asked). Fixtures live in
``tests/conftest.py``; the staged run that tests train is ``bench/staged_run.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.procs import REPO, child_env, kill_group
from training.local_launch import free_port

SHARED_DATA = REPO.parent / "shared" / "data"
#: the one-stage tiny run (mock data) that the CLI tests train
TINY = REPO / "configs" / "runs" / "tiny.yaml"
#: ``flm train`` overrides of the shared tiny runs (tests/conftest.py): quiet, no evaluation, a checkpoint
#: every 3 steps (and the final one), all kept
TINY_FLAGS = [
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "train.eval_interval=1000",
    "checkpoint.save_interval=3",
    "checkpoint.keep_last=5",
]

#: (processes, overrides) of the layouts that must compute what one process computes (tests/training/engine/test_layouts.py)
LAYOUTS = {
    "single": (1, []),
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
    "dp2": (2, []),
    "dp2-distopt": (2, ["parallel.distributed_optimizer=true"]),
    "dp2-distopt-overlap": (
        2,
        [
            "parallel.distributed_optimizer=true",
            "parallel.overlap_grad_reduce=true",
            "parallel.overlap_param_gather=true",
        ],
    ),
    "tp2-sp": (2, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    "tp2xpp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
}

__all__ = [
    "LAYOUTS",
    "REPO",
    "SHARED_DATA",
    "TINY",
    "TINY_FLAGS",
    "child_env",
    "flm",
    "free_port",
    "kill_group",
    "losses",
    "processes_mentioning",
    "read_metrics",
]


def processes_mentioning(text: str) -> list[int]:
    """Pids of the live (not zombie) processes whose command line contains ``text`` (from /proc),
    to check that a run left no process behind."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = next((ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("State:")), "")
            except OSError:
                continue
            if text in cmdline and "zombie" not in state:
                pids.append(int(entry.name))
    return pids


def flm(
    *args: str, nproc: int = 1, timeout: int = 600, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``flm`` (under torchrun when nproc > 1) in a fresh interpreter; return the result."""
    cmd = [sys.executable, "-m", "training.cli", *args]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = child_env(**(env or {}))
    # output through files, not pipes: a killed run's orphaned helper processes could hold a pipe open
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=err, timeout=timeout).returncode
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(cmd, code, out.read(), err.read())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}
