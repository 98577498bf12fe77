"""Preemption: SIGTERM/SIGUSR1 ask the run to stop after the current step, saving first
(docs/faults.md; exit status ``PREEMPTED_EXIT_CODE``)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from training.errors import PREEMPTED_EXIT_CODE, PreemptedError

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    """The signal handlers of one ``fit`` (``install`` … ``restore``) and the collective
    ``requested`` check, so every rank stops at the same step."""

    def __init__(self) -> None:
        #: the first preemption signal this process got (or, after ``requested``, SIGTERM for a
        #: rank that learnt of another rank's signal)
        self.signal: Optional[int] = None

    def install(self) -> dict:
        """Handlers that record the signal; returns the previous handlers for ``restore``. Off the
        main thread (where Python cannot install handlers) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        self.signal = None

        def handler(signum, frame):
            if self.signal is None:
                self.signal = signum
                sys.stderr.write(f"flm: {signal.Signals(signum).name} received: saving after the current step\n")

        return {sig: signal.signal(sig, handler) for sig in PREEMPTION_SIGNALS}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def requested(self) -> bool:
        """Whether any rank got a preemption signal (collective over the default process group)."""
        flag = int(self.signal is not None)
        if dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
            t = torch.tensor([flag], dtype=torch.int32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
            if flag and self.signal is None:
                self.signal = signal.SIGTERM
        return bool(flag)

    def error(self, step: int, checkpoint_root: Path) -> PreemptedError:
        """The error that ends a preempted run, once its checkpoint of ``step`` is saved."""
        return PreemptedError(
            f"stopped by {signal.Signals(self.signal or signal.SIGTERM).name} after step {step}; "
            f"checkpoint saved in {checkpoint_root}; continue with --resume "
            f"(exit status {PREEMPTED_EXIT_CODE})"
        )
