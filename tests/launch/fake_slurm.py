"""A stand-in for Slurm's ``sbatch``/``srun``/``scontrol`` on one machine, for the launcher tests.

``install(bin_dir, state_dir)`` writes three executables into ``bin_dir``; put it first on PATH.

- ``sbatch`` records every submission in ``state_dir/sbatch.jsonl`` (options, script, arguments)
  and prints a job id (``--parsable``); it runs nothing (the jobs run on a real Slurm in
  tests/launch/test_slurm_real.py).
- ``srun`` drops its own ``--options`` and runs the command (one node, one task).
- ``scontrol show hostnames`` prints localhost; ``scontrol requeue ID`` appends ID to
  ``state_dir/requeue``.
"""

from __future__ import annotations

import sys
from pathlib import Path

SBATCH = r"""#!{python}
import json, os, sys
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
script, script_args = (args[0], args[1:]) if args else (None, [])  # --wrap: no script
counter = state / "counter"
job = int(counter.read_text()) + 1 if counter.exists() else 1001
counter.write_text(str(job))
record = {{"id": job, "options": opts, "script": script, "args": script_args}}
with open(state / "sbatch.jsonl", "a") as f:
    f.write(json.dumps(record) + "\n")
print(job)
sys.stdout.flush()
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
