"""A real Slurm cluster on this machine (slurmctld + slurmd on 127.0.0.1, tests/launch/slurm_cluster.py):
``launch/slurm/submit.sh`` chains a two-stage growth run as two jobs; the second job gets the USR1
of a time-limit warning (``scancel --signal=USR1 --batch``) in the middle of its stage, the trainers
save and exit 75, ``stage.sbatch`` requeues the job, and the restarted job resumes: every step of
both stages appears once with exactly the loss of an uninterrupted chain on the same cluster.
Skipped with the reason where Slurm cannot run (not installed and no root/apt-get, daemons fail)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.staged_run import write_staged_run
from tests.helpers import REPO, child_env, processes_mentioning
from tests.launch import slurm_cluster

#: configs/runs/tiny_staged.yaml with every stage's layout whole (submit.sh sizes each job from tp x pp x dp)
RUN = ("name=t", "stages.0.parallel={tp: 1, dp: 1}", "stages.1.parallel={tp: 2, dp: 1}")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.Unavailable as err:
        pytest.skip(f"no real Slurm here: {err}")
    yield c
    c.stop()


def _submit(cluster, tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    out = tmp_path / name
    config = tmp_path / f"{name}.yaml"
    write_staged_run(config, out, *RUN)
    env = child_env(cluster.env, FLM_PYTHON=sys.executable)
    proc = subprocess.run(
        [str(REPO / "launch/slurm/submit.sh"), "--gpus-per-node", "2", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = re.findall(r"as job (\d+)", proc.stdout)
    assert len(jobs) == 2, proc.stdout
    return out, jobs


def _wait(cluster, job: str, states=("COMPLETED",), timeout: float = 600) -> str:
    end = time.monotonic() + timeout
    while True:
        state = cluster.job_state(job)
        if state in states or state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        assert time.monotonic() < end, f"job {job} still {state}"
        time.sleep(1)


def _losses(out: Path) -> dict[tuple[str, int], list[float]]:
    got: dict[tuple[str, int], list[float]] = {}
    for stage in ("stage0-s", "stage1-g"):
        for line in (out / stage / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            got.setdefault((stage, r["step"]), []).append(r["loss"])
    return got


def _logs(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "logs").glob("*.log")))


def test_slurm_chain_preempted_by_usr1_resumes_bit_exact(cluster, tmp_path):
    out, jobs = _submit(cluster, tmp_path, "run")
    metrics = out / "stage1-g" / "metrics.jsonl"
    end = time.monotonic() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert time.monotonic() < end and cluster.job_state(jobs[1]) not in ("FAILED", "COMPLETED"), _logs(out)[-4000:]
        time.sleep(0.2)
    # what `sbatch --signal=B:USR1@300` sends before the time limit
    cluster.run("scancel", "--signal=USR1", "--batch", jobs[1])
    # the uninterrupted reference chain, on the same cluster: submitted now, it trains while Slurm holds
    # the requeued job until its old credential expires (30 s here) instead of after the whole run
    ref, ref_jobs = _submit(cluster, tmp_path, "ref")
    end = time.monotonic() + 600
    while "(restart 1)" not in _logs(out):
        assert time.monotonic() < end, _logs(out)[-4000:]
        time.sleep(1)
    assert _wait(cluster, jobs[1]) == "COMPLETED", _logs(out)[-4000:]
    assert _wait(cluster, ref_jobs[1]) == "COMPLETED", _logs(ref)[-4000:]

    log = _logs(out)
    assert "stage 1 (t/g): started from the grown checkpoint" in log, log[-4000:]
    assert json.loads((out / "stage1-g" / "growth.json").read_text())["exact"]
    assert "got USR1 before its time limit" in log and "exited with status 75" in log, log[-4000:]
    assert "stopped by SIGUSR1 after step" in log and "requeueing it" in log
    assert "stage 1 (t/g): resumed from" in log
    ref_losses, got = _losses(ref), _losses(out)
    assert sorted(got) == sorted(ref_losses)
    assert got == ref_losses, "every step once, with the uninterrupted chain's loss"
    # no process of the run is left on the machine
    assert not processes_mentioning(str(out))
