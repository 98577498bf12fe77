"""The local launchers for real.

- ``launch/torchrun.sh`` as two nodes on this machine: two torchrun agents started separately
  (``--nnodes 2 --node-rank 0/1``, rendezvous on 127.0.0.1), one process each, train DP2 with
  exactly the losses of the one-node launch with two processes.
- ``launch/deepspeed.sh`` with a two-entry hostfile (``localhost``, ``127.0.0.1``) and no ssh: one
  DeepSpeed launcher per "host" (``--node-rank``), the DeepSpeed engine under ZeRO-2 on DP2, with
  the losses of the one-node run (the megatron engine; the engines agree to ~1e-7).

The Slurm scripts run for real in tests/launch/test_slurm_real.py.

Each launch runs in a process group of its own that is killed when the test ends, whatever happens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, child_env, free_port, kill_group, losses, processes_mentioning, read_metrics
from training.checkpoint import step_dir_name

COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "train.eval_interval=1000"]
STEPS = 3
# tiny.yaml leaves dp free: two processes train DP2; one checkpoint, at the end
TWO_RANKS = ["configs/runs/tiny.yaml", f"train.steps={STEPS}", f"checkpoint.save_interval={STEPS}", *COMMON]


def run_script(*args, env: dict, log) -> int:
    """Run a launcher with output to a file (a killed run's helpers could hold a pipe open)."""
    return run_nodes([[*args]], [env], [log])[0]


def run_nodes(commands: list[list], envs: list[dict], logs: list, timeout: float = 300) -> list[int]:
    """Start every command at once (the launchers run this interpreter), each in a process group of
    its own with its output to a file; wait for all of them (``timeout`` seconds in all); their exit
    statuses. Every group is killed when this returns or raises: nothing a launcher started
    outlives the test."""
    procs: list[subprocess.Popen] = []
    try:
        for cmd, env, log in zip(commands, envs, logs):
            procs.append(
                subprocess.Popen(
                    [str(a) for a in cmd],
                    cwd=REPO,
                    env=child_env(FLM_PYTHON=sys.executable, **env),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        end = time.monotonic() + timeout
        return [p.wait(timeout=max(1.0, end - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            kill_group(p)


def _launch_on_two_nodes(
    tmp_path: Path, script: str, node_args, *args: str, env: dict | None = None
) -> tuple[list[int], list[str]]:
    """``script`` once per node (node_args(rank) are its node options), every node recording the
    ranks of its processes in a pid directory of its own; exit statuses and logs."""
    logs = [tmp_path / f"node{r}.log" for r in (0, 1)]
    files = [open(path, "w") for path in logs]
    try:
        codes = run_nodes(
            [[REPO / script, *node_args(r), *args] for r in (0, 1)],
            [{**(env or {}), "FLM_PID_DIR": str(tmp_path / f"pids{r}")} for r in (0, 1)],
            files,
        )
    finally:
        for f in files:
            f.close()
    return codes, [path.read_text() for path in logs]


def _ranks_by_node(tmp_path: Path) -> list[list[int]]:
    """The global ranks each node's processes had (``flm train`` records ``<host>.<rank>.pid``)."""
    return [sorted(int(p.name.split(".")[-2]) for p in (tmp_path / f"pids{r}").glob("*.pid")) for r in (0, 1)]


def _layout(run: Path) -> dict:
    return json.loads((run / "checkpoints" / step_dir_name(STEPS) / "flm_checkpoint.json").read_text())["layout"]


@pytest.fixture(scope="module")
def one_node(tmp_path_factory) -> Path:
    """One node, two processes (``launch/torchrun.sh --nproc 2``, torchrun --standalone): the
    reference both two-node launches are compared with, and the one-node path of the script."""
    tmp = tmp_path_factory.mktemp("one_node")
    one = tmp / "run"
    with open(tmp / "console", "w") as console:
        code = run_script(
            REPO / "launch/torchrun.sh",
            "--nproc",
            "2",
            "--log",
            tmp / "logs" / "train.log",
            *TWO_RANKS,
            f"output_dir={one}",
            env={},
            log=console,
        )
    log = (tmp / "logs" / "train.log").read_text()
    assert code == 0, log[-3000:]
    assert f"flm train: done at step {STEPS}" in log
    assert _layout(one) == {"tp": 1, "pp": 1, "dp": 2}
    return one


@pytest.mark.slow
def test_torchrun_two_nodes_on_one_machine_equal_one_node(one_node, tmp_path):
    # two nodes: two torchrun agents started separately, one process each, rendezvous on 127.0.0.1
    two = tmp_path / "two"
    port = str(free_port())
    codes, logs = _launch_on_two_nodes(
        tmp_path,
        "launch/torchrun.sh",
        lambda r: ["--nnodes", "2", "--node-rank", str(r), "--master-addr", "127.0.0.1", "--master-port", port],
        *TWO_RANKS,
        f"output_dir={two}",
    )
    assert codes == [0, 0], "\n".join(text[-3000:] for text in logs)
    assert f"flm train: done at step {STEPS}" in logs[0]  # rank 0, on node 0, logs
    assert _ranks_by_node(tmp_path) == [[0], [1]], "each node ran one rank of the world of two"
    assert _layout(two) == {"tp": 1, "pp": 1, "dp": 2}
    assert [r["step"] for r in read_metrics(two)] == list(range(1, STEPS + 1))
    assert losses(two) == losses(one_node), "two nodes of one process train exactly like one node of two"
    assert not processes_mentioning(str(two))


def _deepspeed_on_path() -> str:
    """PATH with the venv's bin first: the launcher installed with the project (a dependency) is
    found without an activated venv. Skips the test when DeepSpeed's launcher is not installed."""
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("deepspeed", path=path) is None:
        pytest.skip("DeepSpeed's launcher (`deepspeed`) is not installed; `pip install deepspeed` to run this test")
    return path


@pytest.mark.slow
def test_deepspeed_two_hosts_without_ssh(one_node, tmp_path):
    path = _deepspeed_on_path()
    # two "hosts" on this machine, one slot each, no ssh: one launcher per host (DeepSpeed's
    # --no_ssh --node_rank), meeting at the first host; the DeepSpeed engine under ZeRO-2
    hosts = tmp_path / "hostfile"
    hosts.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    two = tmp_path / "two"
    port = str(free_port())
    codes, logs = _launch_on_two_nodes(
        tmp_path,
        "launch/deepspeed.sh",
        lambda r: ["--hostfile", hosts, "--node-rank", str(r), "--master-port", port],
        *TWO_RANKS,
        "engine=deepspeed",
        "deepspeed.zero_stage=2",
        f"output_dir={two}",
        env={"PATH": path},
    )
    assert codes == [0, 0], "\n".join(text[-3000:] for text in logs)
    assert "dist_world_size=2" in logs[0] and "dist_world_size=2" in logs[1]
    assert _ranks_by_node(tmp_path) == [[0], [1]], "each host ran one rank of the world of two"
    meta = json.loads((two / "checkpoints" / step_dir_name(STEPS) / "flm_checkpoint.json").read_text())
    assert meta["engine"] == "deepspeed" and meta["layout"] == {"tp": 1, "pp": 1, "dp": 2}
    got, ref = losses(two), losses(one_node)
    assert sorted(got) == list(range(1, STEPS + 1))
    # the megatron engine's DP2 run on one node: the engines agree to ~1e-7 (tests/training/engine/test_ds_trainer.py)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5)
    assert not processes_mentioning(str(two))
