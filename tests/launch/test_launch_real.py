"""The local launchers for real: launch/torchrun.sh trains with two processes, and the Slurm
scripts run a two-stage growth run as a chain of two jobs through a one-machine stand-in for
Slurm (tests/launch/fake_slurm.py): the first job (1 process) trains stage 0, the second (2
processes, TP2) starts from the grown checkpoint, is preempted after its first step and requeued:
it resumes from its checkpoint and appends to its log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO, read_metrics
from tests.launch.fake_slurm import install, submissions
from training.checkpoint import step_dir_name

COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "train.eval_interval=1000"]

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
    full = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **env)
    return subprocess.run(
        [str(a) for a in args], cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT, timeout=600
    ).returncode


@pytest.mark.slow
def test_torchrun_launcher_trains_two_processes(tmp_path):
    out = tmp_path / "run"
    with open(tmp_path / "console", "w") as console:
        code = run_script(
            REPO / "launch/torchrun.sh",
            "--nproc",
            "2",
            "--log",
            tmp_path / "logs" / "train.log",
            "configs/runs/tiny.yaml",
            "train.steps=2",
            "parallel.tp=2",
            f"output_dir={out}",
            *COMMON,
            env={},
            log=console,
        )
    log = (tmp_path / "logs" / "train.log").read_text()
    assert code == 0, log[-3000:]
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert (out / "checkpoints" / step_dir_name(2)).is_dir()
    assert "flm train: done at step 2" in log


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


@pytest.mark.slow
def test_deepspeed_launcher_trains_on_a_local_hostfile(tmp_path):
    # the launcher installed with the project (a dependency) is found without an activated venv
    bindir = os.path.dirname(sys.executable)
    path = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("deepspeed", path=path) is None:
        pytest.skip("DeepSpeed's launcher (`deepspeed`) is not installed; `pip install deepspeed` to run this test")
    hosts = tmp_path / "hostfile"
    hosts.write_text("localhost slots=2\n")
    out = tmp_path / "run"
    with open(tmp_path / "console", "w") as console:
        code = run_script(
            REPO / "launch/deepspeed.sh",
            "--hostfile",
            hosts,
            "configs/runs/tiny.yaml",
            "train.steps=2",
            "parallel.tp=2",
            f"output_dir={out}",
            *COMMON,
            env={"PATH": path},
            log=console,
        )
    assert code == 0, (tmp_path / "console").read_text()[-3000:]
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
