"""A stand-in for Slurm's ``sbatch``/``srun``/``scontrol`` on one machine, for the launcher tests.

``install(bin_dir, state_dir)`` writes three executables into ``bin_dir``; put it first on PATH.

- ``sbatch`` records every submission in ``state_dir/sbatch.jsonl`` (options, script, arguments)
  and prints a job id (``--parsable``). With ``FAKE_SLURM_RUN=1`` it also runs the job, right
  away and to its end, as Slurm would on one node: the batch script under bash with
  SLURM_JOB_ID, SLURM_NNODES, SLURM_JOB_NODELIST=localhost, SLURM_SUBMIT_DIR,
  SLURM_RESTART_COUNT and the ``--export`` variables, in ``--chdir``, output to ``--output``
  (``%j`` = job id; appended with ``--open-mode append``). ``--dependency afterok:ID`` on a job
  that did not exit 0 leaves the job pending forever (recorded, not run). A job submitted with
  ``--requeue`` that called ``scontrol requeue`` on itself, or whose first run fails while
  ``FAKE_SLURM_PREEMPT_ONCE=1`` (the test kills it with ``FLM_FAULT_AT`` to stand for a preempted
  node), runs again with SLURM_RESTART_COUNT + 1 and without ``FLM_FAULT_AT`` (the preemption
  happened once).
  Exit statuses go to ``state_dir/exit.<id>``.
- ``srun`` drops its own ``--options`` and runs the command (one node, one task).
- ``scontrol show hostnames`` prints localhost; ``scontrol requeue ID`` appends ID to
  ``state_dir/requeue``.
"""

from __future__ import annotations

import sys
from pathlib import Path

SBATCH = r"""#!{python}
import json, os, subprocess, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM_DIR"])
flags = {{"--parsable", "--requeue"}}
args, opts = sys.argv[1:], {{}}
while args and args[0].startswith("-"):
    key = args.pop(0)
    if "=" in key:
        key, value = key.split("=", 1)
    elif key in flags:
        value = True
    else:
        value = args.pop(0)
    opts[key] = value
script, script_args = args[0], args[1:]
counter = state / "counter"
job = int(counter.read_text()) + 1 if counter.exists() else 1001
counter.write_text(str(job))
record = {{"id": job, "options": opts, "script": script, "args": script_args}}
with open(state / "sbatch.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")
print(job)
sys.stdout.flush()
if os.environ.get("FAKE_SLURM_RUN") != "1":
    sys.exit(0)
dep = opts.get("--dependency")
if dep:
    prev = dep.split(":", 1)[1]
    status_file = state / f"exit.{{prev}}"
    if not status_file.exists() or status_file.read_text().strip() != "0":
        (state / f"exit.{{job}}").write_text("pending: DependencyNeverSatisfied")
        sys.exit(0)
env = dict(os.environ)
for item in str(opts.get("--export", "ALL")).split(","):
    if "=" in item:
        k, v = item.split("=", 1)
        env[k] = v
nodes = int(opts.get("--nodes", 1))
env.update(SLURM_JOB_ID=str(job), SLURM_NNODES=str(nodes), SLURM_JOB_NODELIST="localhost",
           SLURM_SUBMIT_DIR=os.getcwd())
cwd = opts.get("--chdir", os.getcwd())
out = str(opts.get("--output", f"slurm-{{job}}.out")).replace("%j", str(job))
out = out if os.path.isabs(out) else os.path.join(cwd, out)
mode = "a" if opts.get("--open-mode") == "append" else "w"
preempt_once = os.environ.get("FAKE_SLURM_PREEMPT_ONCE") == "1"
restarts = 0
while True:
    env["SLURM_RESTART_COUNT"] = str(restarts)
    with open(out, mode) as log:
        status = subprocess.run(["bash", script, *script_args], cwd=cwd, env=env, stdout=log,
                                stderr=subprocess.STDOUT).returncode
    requeued = (state / "requeue").exists() and str(job) in (state / "requeue").read_text().split()
    if opts.get("--requeue") and restarts < 3 and (requeued or (preempt_once and restarts == 0 and status != 0)):
        if requeued:
            (state / "requeue").write_text("")
        env.pop("FLM_FAULT_AT", None)
        restarts += 1
        continue
    break
(state / f"exit.{{job}}").write_text(str(status))
"""

SRUN = r"""#!/usr/bin/env bash
while [[ ${1:-} == -* ]]; do shift; done
exec "$@"
"""

SCONTROL = r"""#!/usr/bin/env bash
case "$1 ${2:-}" in
  "show hostnames") echo localhost ;;
  requeue*) echo "$2" >>"$FAKE_SLURM_DIR/requeue" ;;
  *) echo "fake scontrol: unsupported: $*" >&2; exit 1 ;;
esac
"""


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the fakes; return the environment variables that activate them."""
    import os

    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("sbatch", SBATCH.format(python=sys.executable)), ("srun", SRUN), ("scontrol", SCONTROL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state_dir)}


def submissions(state_dir: Path) -> list[dict]:
    import json

    path = state_dir / "sbatch.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
