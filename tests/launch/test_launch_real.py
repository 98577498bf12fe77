"""The local launchers for real.

- ``launch/torchrun.sh`` as two nodes on this machine: two torchrun agents started separately
  (``--nnodes 2 --node-rank 0/1``, rendezvous on 127.0.0.1), one process each, train DP2 with
  exactly the losses of the one-node launch with two processes.
- ``launch/deepspeed.sh`` with a two-entry hostfile (``localhost``, ``127.0.0.1``) and no ssh: one
  DeepSpeed launcher per "host" (``--node-rank``), the DeepSpeed engine under ZeRO-2 on DP2, exactly
  the losses of the launch on a one-host hostfile with two slots.
- The Slurm scripts run a two-stage growth run as a chain of two jobs through a one-machine
  stand-in for Slurm (tests/launch/fake_slurm.py): the first job (1 process) trains stage 0, the
  second (2 processes, TP2) starts from the grown checkpoint, is preempted after its first step and
  requeued: it resumes from its checkpoint and appends to its log.

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
from tests.launch.fake_slurm import install, submissions
from training.checkpoint import step_dir_name

COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "train.eval_interval=1000"]
STEPS = 3
# tiny.yaml leaves dp free: two processes train DP2; one checkpoint, at the end
TWO_RANKS = ["configs/runs/tiny.yaml", f"train.steps={STEPS}", f"checkpoint.save_interval={STEPS}", *COMMON]

RUN = """
name: t
output_dir: {out}
data: {{kind: mock, seed: 3}}
train: {{global_batch_size: 8, micro_batch_size: 2, lr: 2.0e-3, min_lr: 2.0e-4, warmup_steps: 1, eval_interval: 1000}}
logging: {{progress_bar: false, tensorboard: false}}
checkpoint: {{save_interval: 1, keep_last: 5}}
stages:
  - name: s
    model: {{num_layers: 2, hidden_size: 64, ffn_hidden_size: 256, num_attention_heads: 4, vocab_size: 512, seq_length: 64}}
    parallel: {{tp: 1, dp: 1}}
    tokens: 1024
  - name: g
    model: {{num_layers: 2, hidden_size: 128, ffn_hidden_size: 512, num_attention_heads: 8, vocab_size: 512, seq_length: 64}}
    parallel: {{tp: 2, dp: 1}}
    tokens: 1536
    growth: {{default_operator: msg, ramp_steps: 2}}
"""


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


@pytest.mark.slow
def test_torchrun_two_nodes_on_one_machine_equal_one_node(tmp_path):
    # one node, two processes (torchrun --standalone): the reference, and the one-node path of the script
    one = tmp_path / "one"
    with open(tmp_path / "console", "w") as console:
        code = run_script(
            REPO / "launch/torchrun.sh",
            "--nproc",
            "2",
            "--log",
            tmp_path / "logs" / "train.log",
            *TWO_RANKS,
            f"output_dir={one}",
            env={},
            log=console,
        )
    log = (tmp_path / "logs" / "train.log").read_text()
    assert code == 0, log[-3000:]
    assert f"flm train: done at step {STEPS}" in log
    assert _layout(one) == {"tp": 1, "pp": 1, "dp": 2}

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
    assert losses(two) == losses(one), "two nodes of one process train exactly like one node of two"
    assert not processes_mentioning(str(two))


def _deepspeed_on_path() -> str:
    """PATH with the venv's bin first: the launcher installed with the project (a dependency) is
    found without an activated venv. Skips the test when DeepSpeed's launcher is not installed."""
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("deepspeed", path=path) is None:
        pytest.skip("DeepSpeed's launcher (`deepspeed`) is not installed; `pip install deepspeed` to run this test")
    return path


@pytest.mark.slow
def test_deepspeed_two_hosts_without_ssh_equal_one_host(tmp_path):
    path = _deepspeed_on_path()
    zero2 = ["engine=deepspeed", "deepspeed.zero_stage=2"]
    # one host with two slots (the local path, no ssh check): the reference
    one_host = tmp_path / "one_host"
    one_host.write_text("localhost slots=2\n")
    one = tmp_path / "one"
    port = str(free_port())
    with open(tmp_path / "console", "w") as console:
        code = run_script(
            REPO / "launch/deepspeed.sh",
            "--hostfile",
            one_host,
            "--master-port",
            port,
            *TWO_RANKS,
            *zero2,
            f"output_dir={one}",
            env={"PATH": path},
            log=console,
        )
    assert code == 0, (tmp_path / "console").read_text()[-3000:]
    assert _layout(one) == {"tp": 1, "pp": 1, "dp": 2}

    # two "hosts" on this machine, one slot each, no ssh: one launcher per host (DeepSpeed's
    # --no_ssh --node_rank), meeting at the first host
    two_hosts = tmp_path / "two_hosts"
    two_hosts.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    two = tmp_path / "two"
    port = str(free_port())
    codes, logs = _launch_on_two_nodes(
        tmp_path,
        "launch/deepspeed.sh",
        lambda r: ["--hostfile", two_hosts, "--node-rank", str(r), "--master-port", port],
        *TWO_RANKS,
        *zero2,
        f"output_dir={two}",
        env={"PATH": path},
    )
    assert codes == [0, 0], "\n".join(text[-3000:] for text in logs)
    assert "dist_world_size=2" in logs[0] and "dist_world_size=2" in logs[1]
    assert _ranks_by_node(tmp_path) == [[0], [1]], "each host ran one rank of the world of two"
    meta = json.loads((two / "checkpoints" / step_dir_name(STEPS) / "flm_checkpoint.json").read_text())
    assert meta["engine"] == "deepspeed" and meta["layout"] == {"tp": 1, "pp": 1, "dp": 2}
    assert [r["step"] for r in read_metrics(two)] == list(range(1, STEPS + 1))
    assert losses(two) == losses(one), "two hosts of one slot train exactly like one host of two"
    assert not processes_mentioning(str(two))


@pytest.mark.slow
def test_slurm_chain_with_a_preempted_first_job(tmp_path):
    config = tmp_path / "t.yaml"
    out = tmp_path / "out"
    config.write_text(RUN.format(out=out))
    env = install(tmp_path / "bin", tmp_path / "slurm")
    env.update(FAKE_SLURM_RUN="1", FAKE_SLURM_PREEMPT_ONCE="1", FLM_FAULT_AT="t/g:1")
    with open(tmp_path / "console", "w") as console:
        code = run_script(REPO / "launch/slurm/submit.sh", config, env=env, log=console)
    console_text = (tmp_path / "console").read_text()
    assert code == 0, console_text
    subs = submissions(tmp_path / "slurm")
    assert [s["args"][1] for s in subs] == ["0", "1"]
    assert [s["options"]["--gpus-per-node"] for s in subs] == ["1", "2"]
    assert subs[1]["options"]["--dependency"] == f"afterok:{subs[0]['id']}"
    assert [(tmp_path / "slurm" / f"exit.{s['id']}").read_text() for s in subs] == ["0", "0"]
    assert [r["step"] for r in read_metrics(out / "stage0-s")] == [1, 2]

    second = (out / "logs" / f"stage1-g.{subs[1]['id']}.log").read_text()
    assert "(restart 0)" in second and "started from the grown checkpoint" in second, second[-3000:]
    assert "FLM_FAULT_AT: killing t/g after step 1" in second
    assert "(restart 1)" in second and "stage 1 (t/g): resumed from" in second, second[-3000:]
    assert [r["step"] for r in read_metrics(out / "stage1-g")] == [1, 2, 3], "the requeued job continues at step 2"
    growth = json.loads((out / "stage1-g" / "growth.json").read_text())
    assert growth["exact"]
