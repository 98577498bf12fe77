"""Preemption (training/engine/loop/preemption.py): SIGTERM/SIGUSR1 are recorded by the handlers of
one fit and restored after it; ``requested`` is collective, so a signal to one gloo rank stops every
rank at the same step. The CLI drills (save, exit 75, resume) are in tests/training/test_faults.py."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from training.engine.loop.preemption import PREEMPTION_SIGNALS, Preemption
from training.errors import PREEMPTED_EXIT_CODE, PreemptedError
from training.local_launch import free_port


@pytest.mark.parametrize("sig", PREEMPTION_SIGNALS)
def test_signal_is_recorded_once_and_handlers_restored(sig, capfd):
    before = {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS}
    preemption = Preemption()
    previous = preemption.install()
    try:
        assert not preemption.requested()
        os.kill(os.getpid(), sig)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not replace the first
        assert preemption.requested() and preemption.signal == sig
    finally:
        preemption.restore(previous)
    assert {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS} == before
    assert capfd.readouterr().err.count("received: saving after the current step") == 1
    error = preemption.error(7, Path("/runs/x/checkpoints"))
    assert isinstance(error, PreemptedError) and error.exit_code == PREEMPTED_EXIT_CODE
    assert str(error) == (
        f"stopped by {signal.Signals(sig).name} after step 7; checkpoint saved in /runs/x/checkpoints; "
        "continue with --resume (exit status 75)"
    )


def test_install_forgets_the_previous_fits_signal():
    preemption = Preemption()
    preemption.signal = signal.SIGTERM
    preemption.restore(preemption.install())
    assert preemption.signal is None and not preemption.requested()


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        preemption = Preemption()
        previous = preemption.install()
        try:
            seen = [preemption.requested()]
            if rank == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            seen.append(preemption.requested())
        finally:
            preemption.restore(previous)
        name = signal.Signals(preemption.signal).name if preemption.signal else None
        Path(out, str(rank)).write_text(f"{seen} {name}")
    finally:
        dist.destroy_process_group()


def test_a_signal_to_one_rank_stops_every_rank(tmp_path):
    mp.spawn(_rank, args=(free_port(), str(tmp_path)), nprocs=2)
    # rank 0 got no signal of its own: it stops too, as if it got SIGTERM
    assert (tmp_path / "0").read_text() == "[False, True] SIGTERM"
    assert (tmp_path / "1").read_text() == "[False, True] SIGUSR1"
