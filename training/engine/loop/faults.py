"""Fault injection for kill-and-resume tests and drills (docs/faults.md), read from the environment
at each call: ``FLM_FAULT_AT`` kills the run after a step, ``FLM_FAULT_LOSS`` replaces losses."""

from __future__ import annotations

import multiprocessing
import os
import sys

#: the exit status of a run killed by ``FLM_FAULT_AT``
FAULT_EXIT_CODE = 43


def injected_loss(run_name: str, batch: int, loss: float) -> float:
    """``FLM_FAULT_LOSS=<run name>:<first>-<last>:<nan|spike>`` replaces the loss of the global
    batches ``first..last`` (1-based, by data position, so a rollback that skips them sees no more
    faults) with NaN or ``loss * 1e6``; other runs and batches keep ``loss``."""
    spec = os.environ.get("FLM_FAULT_LOSS")
    if not spec:
        return loss
    name, _, rest = spec.rpartition(":")
    name, _, span = name.rpartition(":")
    first, _, last = span.partition("-")
    if name != run_name or not int(first) <= batch <= int(last or first):
        return loss
    return float("nan") if rest == "nan" else loss * 1e6


def kill_if_due(run_name: str, step: int) -> None:
    """``FLM_FAULT_AT=<run name>:<step>`` kills every process of the run abruptly (``os._exit`` with
    ``FAULT_EXIT_CODE``, no cleanup, child processes killed too) right after that step."""
    target = os.environ.get("FLM_FAULT_AT")
    if target and target == f"{run_name}:{step}":
        sys.stderr.write(f"FLM_FAULT_AT: killing {run_name} after step {step}\n")
        sys.stderr.flush()
        for child in multiprocessing.active_children():  # as a scheduler kills the whole process tree
            child.kill()
        os._exit(FAULT_EXIT_CODE)
