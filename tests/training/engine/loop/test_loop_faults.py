"""Fault injection (training/engine/loop/faults.py): FLM_FAULT_LOSS replaces losses of named batches,
FLM_FAULT_AT kills the whole process tree after a named step (exit 43). The CLI drills are in
tests/training/test_faults.py."""

from __future__ import annotations

import math
import subprocess
import sys

from tests.helpers import REPO, child_env
from training.engine.loop.faults import FAULT_EXIT_CODE, injected_loss, kill_if_due


def test_no_spec_keeps_the_loss(monkeypatch):
    monkeypatch.delenv("FLM_FAULT_LOSS", raising=False)
    assert injected_loss("tiny", 3, 2.5) == 2.5


def test_loss_replaced_only_for_the_named_run_and_batches(monkeypatch):
    monkeypatch.setenv("FLM_FAULT_LOSS", "tiny:3-5:nan")
    assert [math.isnan(injected_loss("tiny", b, 2.0)) for b in (2, 3, 4, 5, 6)] == [False, True, True, True, False]
    assert injected_loss("other", 4, 2.0) == 2.0
    monkeypatch.setenv("FLM_FAULT_LOSS", "stage:a:7:spike")  # run names may contain ':'
    assert injected_loss("stage:a", 7, 2.0) == 2e6
    assert injected_loss("stage:a", 8, 2.0) == 2.0


def test_kill_if_due_ignores_other_steps_and_runs(monkeypatch):
    monkeypatch.setenv("FLM_FAULT_AT", "tiny:4")
    kill_if_due("tiny", 3)
    kill_if_due("other", 4)


CHILD = """
import multiprocessing, sys, time
from training.engine.loop.faults import kill_if_due

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
    child.start()
    print(child.pid, flush=True)
    kill_if_due("tiny", 2)
    print("survived", flush=True)
    kill_if_due("tiny", 4)
    print("not reached", flush=True)
"""


def test_kill_if_due_kills_the_process_tree_with_status_43(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env=child_env(FLM_FAULT_AT="tiny:4"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == FAULT_EXIT_CODE == 43, proc.stderr[-2000:]
    pid, survived = proc.stdout.split()
    assert survived == "survived"
    assert "FLM_FAULT_AT: killing tiny after step 4" in proc.stderr
    # the child process was killed, not left running
    assert not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
