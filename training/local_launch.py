"""Processes on this machine: a free TCP port, and the torchrun command that runs ``flm`` N times.

Kept apart from ``training.engine.parallel`` (which imports megatron-core) so launching costs no
megatron import.
"""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the rendezvous of local jobs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, flm_args: list[str]) -> list[str]:
    """The command that runs ``flm <flm_args>`` in ``nproc`` local processes under torchrun."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        "-m",
        "training.cli",
        *flm_args,
    ]
