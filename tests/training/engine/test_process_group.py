"""The process group's timeout (``parallel.timeout_minutes``, training/engine/parallel.py): a
collective that one rank never joins fails after the timeout instead of hanging, with two real gloo
processes started the way torchrun starts them (env://)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from training.local_launch import free_port

TIMEOUT_MINUTES = 0.05  # 3 s


def _worker(rank: int, port: int, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    from training.engine.parallel import init_process_group

    init_process_group(timeout_minutes=TIMEOUT_MINUTES)
    done = Path(result, "rank0")
    if rank == 0:
        started = time.monotonic()
        try:
            dist.barrier()  # rank 1 never joins it
            outcome = "returned"
        except Exception as err:  # what gloo raises for a timed-out collective
            outcome = f"{type(err).__name__}: {err}"
        done.write_text(f"{time.monotonic() - started:.1f}\n{outcome}")
    else:
        deadline = time.monotonic() + 120
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    # no destroy_process_group: rank 0's group is broken by the timeout; the processes just exit


def test_a_collective_one_rank_never_joins_fails_after_the_timeout(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    elapsed, outcome = (tmp_path / "rank0").read_text().split("\n", 1)
    assert outcome != "returned"
    assert "timed out" in outcome.lower() or "timeout" in outcome.lower(), outcome
    # the 3 s timeout, not the default 30 minutes nor rank 1's 120 s wait
    assert 2.0 <= float(elapsed) < 60, elapsed
