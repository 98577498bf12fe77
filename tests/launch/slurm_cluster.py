"""A real one-host Slurm cluster for tests: slurmctld + slurmd on 127.0.0.1 (Debian's ``slurm-wlm``).

``start(dir)`` writes a ``slurm.conf`` (auth/none, no cgroups, free ports, one node ``localhost``
with this machine's CPUs and ``gpus`` count-only GPU GRES; job credentials live 30 s instead of
120, which is also how long Slurm holds a requeued job before it may start again), starts both
daemons in the foreground as children of the test and waits until the node is idle; it returns a :class:`Cluster` whose ``env`` points the Slurm clients at it
(``SLURM_CONF``). Raises :class:`Unavailable` with the reason when it cannot run here (no Slurm
binaries and no root to install them, daemons that do not come up), so tests can skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import free_port
from training.cli import die_with_parent

DAEMONS = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "srun")


class Unavailable(Exception):
    pass


def ensure_installed() -> None:
    if all(shutil.which(d) or Path(f"/usr/sbin/{d}").exists() for d in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("Slurm (slurm-wlm) is not installed and cannot be installed here (needs root and apt-get)")
    proc = subprocess.run(
        ["apt-get", "install", "-y", "slurm-wlm"],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
    )
    if proc.returncode != 0:
        raise Unavailable(f"apt-get install slurm-wlm failed: {proc.stderr.strip()[-300:]}")


CONF = """\
ClusterName=flmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=30
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
# the main scheduling loop every 2 s (default 60): a requeued job starts as soon as its credential expires
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
KillWait=60
MinJobAge=600
JobRequeue=1
SlurmdTimeout=60
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} Gres=gpu:{gpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


class Cluster:
    def __init__(self, directory: Path):
        self.dir = directory
        self.env = dict(
            os.environ,
            SLURM_CONF=str(directory / "slurm.conf"),
            PATH=f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}",
        )
        self.procs: list[subprocess.Popen] = []

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), capture_output=True, text=True, env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {proc.stderr}")
        return proc

    def job_state(self, job: str) -> str:
        out = self.run("scontrol", "show", "job", job, check=False).stdout
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def stop(self) -> None:
        self.run("scancel", "--full", "--user=root", check=False) if shutil.which("scancel") else None
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start(directory: Path, gpus: int = 2) -> Cluster:
    ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (directory / sub).mkdir(exist_ok=True)
    (directory / "slurm.conf").write_text(
        CONF.format(d=directory, ctld_port=free_port(), d_port=free_port(), cpus=os.cpu_count() or 1, gpus=gpus)
    )
    # "GPUs" without device files: the launch scripts size jobs in GPUs; the trainers run on CPU (gloo)
    for i in range(gpus):
        (directory / f"gpu{i}").touch()
    (directory / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName=localhost Name=gpu File={directory}/gpu[0-{gpus - 1}]\n"
    )
    cluster = Cluster(directory)
    try:
        for daemon, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D", "-N", "localhost"])):
            log = open(directory / f"{daemon}.out", "w")
            # the daemons end with the test process, however it ends (SIGTERM from the kernel)
            cluster.procs.append(
                subprocess.Popen(
                    [f"/usr/sbin/{daemon}", *args],
                    env=cluster.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            )
        deadline = time.monotonic() + 60
        while True:
            for proc in cluster.procs:
                if proc.poll() is not None:
                    raise Unavailable(
                        f"{proc.args[0]} exited ({proc.returncode}): "
                        f"{(directory / (Path(proc.args[0]).name + '.out')).read_text()[-500:]}"
                    )
            out = cluster.run("sinfo", "-h", "-o", "%T", check=False)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                return cluster
            if time.monotonic() > deadline:
                raise Unavailable(f"the node never became idle: {out.stdout} {out.stderr}")
            time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise
