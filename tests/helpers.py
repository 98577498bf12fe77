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
from training.config import load_run_config
from training.data.source import MockSource
from training.engine.trainer import Trainer
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

#: the tiny model 4 layers deep, for layouts that need more layers than its 2
DEEP = ["model.num_layers=4"]
#: (processes, overrides) of the layouts that must compute what one process computes
#: (tests/training/engine/test_layouts.py). Not here because another multi-process test already checks
#: them against one process (issue 26: each distributed world set up once): PP2 (the resume chains of
#: test_resume.py continue the TP2 and DP2-distributed-optimizer runs under PP2 with equal losses, rel 1e-5),
#: TP2 + sequence parallel, DP + distributed optimizer and TP2 x PP2 (FLM-101B's stage layouts TP2 x DP4
#: and TP2 x PP2 x DP2, both with SP and the distributed optimizer, on 8 processes: the staged run of
#: tests/training/orchestration/test_stages.py, compared with one process step by step)
LAYOUTS = {
    "single": (1, []),
    "tp2": (2, ["parallel.tp=2"]),
    "dp2": (2, []),
    "dp2-distopt-overlap": (
        2,
        [
            "parallel.distributed_optimizer=true",
            "parallel.overlap_grad_reduce=true",
            "parallel.overlap_param_gather=true",
        ],
    ),
    # the interleaved 1F1B schedule: layers must divide by pp x virtual_pp, so the DEEP model (own reference)
    "single-deep": (1, DEEP),
    "pp2-vp2": (2, [*DEEP, "parallel.pp=2", "parallel.virtual_pp=2"]),
}


def reference_layout(name: str) -> str:
    """The one-process entry of ``LAYOUTS`` that layout ``name`` must match: the same model."""
    return "single-deep" if DEEP[0] in LAYOUTS[name][1] else "single"


__all__ = [
    "DEEP",
    "LAYOUTS",
    "REPO",
    "SHARED_DATA",
    "TINY",
    "TINY_FLAGS",
    "child_env",
    "flm",
    "free_port",
    "initial_checkpoint",
    "kill_group",
    "losses",
    "processes_mentioning",
    "read_metrics",
    "reference_layout",
]


def initial_checkpoint(out: Path, *overrides: str) -> Path:
    """Save, at step 0 and in this process (no ``flm`` start: seconds of imports saved), a trainer of
    ``configs/runs/tiny.yaml`` with ``overrides`` under ``out``; returns the checkpoint root, to
    start runs of other layouts from the same weights (``--init-from``)."""
    cfg = load_run_config(TINY, [*TINY_FLAGS, f"output_dir={out}", *overrides])
    Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0)).save()
    return out / "checkpoints"


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
