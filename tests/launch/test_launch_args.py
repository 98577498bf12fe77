"""The argument parsing the launchers share (launch/common.sh: flm_arg, flm_train_arg, flm_args_done):
each launcher answers the shared arguments alike, and takes its own options on top of them."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import REPO

LAUNCHERS = ["launch/torchrun.sh", "launch/deepspeed.sh", "launch/slurm/submit.sh"]
TINY = str(REPO / "configs" / "runs" / "tiny.yaml")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([str(REPO / script), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", LAUNCHERS)
@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no run config given"),
        (["--dry-run", "configs/runs/nope.yaml"], "run config not found: configs/runs/nope.yaml"),
        (["--dry-run", "--bogus", TINY], "unknown option --bogus (see --help)"),
    ],
)
def test_shared_argument_errors(script, args, message):
    proc = run(script, *args)
    name = os.path.basename(script)
    assert proc.returncode == 2 and f"{name}: {message}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("script", LAUNCHERS)
def test_help_prints_the_scripts_own_header(script):
    proc = run(script, "--help", "--bogus")  # --help answers before any other argument is checked
    assert proc.returncode == 0, proc.stderr
    header = (REPO / script).read_text().splitlines()[1].removeprefix("# ")
    assert proc.stdout.splitlines()[0] == header and "set -euo" not in proc.stdout


@pytest.mark.parametrize("script", ["launch/torchrun.sh", "launch/deepspeed.sh"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage", "one", TINY], "--stage must be a stage index, got 'one'"),
        ([TINY, "--log"], "--log needs a value"),
        ([TINY, "--stage"], "--stage needs a value"),
    ],
)
def test_training_launchers_share_stage_and_log(tmp_path, script, args, message):
    hosts = tmp_path / "hostfile"
    hosts.write_text("localhost slots=1\n")
    extra = ["--hostfile", str(hosts)] if script.endswith("deepspeed.sh") else []
    proc = run(script, "--dry-run", *extra, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_submit_takes_no_training_launcher_options():
    proc = run("launch/slurm/submit.sh", "--dry-run", "--resume", TINY)
    assert proc.returncode == 2 and "unknown option --resume" in proc.stderr, proc.stderr
