"""``flm eval RUN_DIR [--watch]``: evaluate a run's checkpoints, each in a process of its own.

Evaluation stays out of the training job: nothing in a training process waits on it (at the scale
the product is for, an in-process evaluation on rank 0 would hold every other rank in a collective,
and the whole model in one host's RAM). Instead this command finds the run's checkpoints
(``<RUN_DIR>/checkpoints/step_N`` and, for a staged run, ``<RUN_DIR>/stage<i>-<name>/checkpoints/step_N``;
more roots with ``--checkpoints`` when the run sets ``checkpoint.dir``), verifies each against its
recorded hashes (one that fails is reported in one line and skipped, never scored), and runs ``flm
iq --model flm`` on it in a child process. The scores are written beside the run's metrics, keyed
by tokens: one JSON line per checkpoint in ``<stage output_dir>/eval.jsonl`` (the output_dir the
checkpoint's config names), the full ``flm iq`` outputs in ``<stage output_dir>/iq/step_N/``, and
``iq/*`` scalars in the stage's TensorBoard directory.

``--watch`` keeps looking every ``--interval`` seconds until the run is over: its lock file
(``<RUN_DIR>/.flm.lock``) is free and no checkpoint is left to evaluate. ``--final-only`` evaluates
only each stage's final checkpoint (what ``flm dryrun`` shows per stage). On Slurm,
``launch/slurm/submit.sh --eval`` chains one such job after each stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from eval_iq.stage_eval import compact
from training.config import IQ_EVAL_RECORD
from training.errors import FLMError, UsageError

log = logging.getLogger(__name__)

EVAL_FILE = "eval.jsonl"

DEFAULT_TASKS = "rules,patterns,anti_interference"
#: the project backend (``flm iq --model flm``) reads the whole model into one host's RAM in fp32: 8B
#: parameters are 32 GB; larger checkpoints are skipped with a note (FLM-101B's stages: export with
#: ``flm export-hf`` and evaluate with ``flm iq --model hf --parallelize`` on GPUs)
DEFAULT_MAX_PARAMS = 8e9
HELP = "evaluate a run's checkpoints (IQ subtasks), each in its own process; --watch follows a live run"


@dataclass(frozen=True)
class Candidate:
    """A checkpoint found under a run directory and where its scores go."""

    path: Path
    #: the output_dir of the (stage's) run that saved it: eval.jsonl, iq/, tensorboard/ go there
    run_dir: Path
    step: int
    tokens: int
    final: bool
    #: parameters of the checkpoint's model (``training.model_size.total_params``)
    params: int


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", help="the run's output_dir (a staged run's top directory or a single run's)")
    p.add_argument(
        "--tasks",
        default=None,
        help=f"IQ subtasks, categories or groups (default: the run's iq_eval.tasks, else {DEFAULT_TASKS})",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="first N instances of each subtask (default: the run's iq_eval.limit)"
    )
    p.add_argument(
        "--data-dir", default=None, help="SuperGLUE/CLUE directory for symbolic mapping (default $FLM_IQ_DATA_DIR)"
    )
    p.add_argument(
        "--checkpoints",
        action="append",
        default=[],
        metavar="DIR",
        help="another checkpoint root to look in (a run with checkpoint.dir); repeatable",
    )
    p.add_argument("--final-only", action="store_true", help="only each stage's final checkpoint")
    p.add_argument("--watch", action="store_true", help="keep evaluating new checkpoints until the run is over")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between looks with --watch (default 60)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one evaluation may take (default 3600)")
    p.add_argument(
        "--max-params",
        type=float,
        default=DEFAULT_MAX_PARAMS,
        help="skip (with a one-line note) checkpoints of larger models: the project backend holds the whole "
        f"model in this host's RAM in fp32 (default {DEFAULT_MAX_PARAMS:.0e})",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist; pass a run's output_dir")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.max_params <= 0:
        raise UsageError(f"--max-params must be > 0, got {args.max_params}")
    options = EvalOptions.for_run(run_dir, args.tasks, args.limit, args.data_dir, args.timeout, args.max_params)
    roots = [Path(r) for r in args.checkpoints]
    while True:
        done = evaluate_pending(run_dir, options, roots, final_only=args.final_only)
        if not args.watch or (not run_is_live(run_dir) and not pending(run_dir, roots, args.final_only)):
            log.info("evaluated %d checkpoint(s) of %s", done, run_dir)
            return 0
        time.sleep(args.interval)


@dataclass(frozen=True)
class EvalOptions:
    tasks: str
    limit: Optional[int]
    data_dir: Optional[str]
    timeout: float
    max_params: float = 0.0

    @classmethod
    def for_run(
        cls,
        run_dir: Path,
        tasks: Optional[str],
        limit: Optional[int],
        data_dir: Optional[str],
        timeout: float,
        max_params: float = 0.0,
    ) -> EvalOptions:
        """The options given, else the run's ``iq_eval`` section (a staged run records it in
        ``<run_dir>/iq_eval.json`` for its evaluators), else the defaults."""
        path = run_dir / IQ_EVAL_RECORD
        section = json.loads(path.read_text()) if path.is_file() else {}
        return cls(
            tasks or ",".join(section.get("tasks") or []) or DEFAULT_TASKS,
            limit if limit is not None else section.get("limit"),
            data_dir or section.get("data_dir"),
            timeout,
            max_params or DEFAULT_MAX_PARAMS,
        )


def _meta(path: Path) -> dict[str, Any]:
    from training.checkpoint import read_meta  # startup time: loaded when the command runs

    return read_meta(path)


def find_checkpoints(run_dir: Path, roots: Sequence[Path]) -> list[Candidate]:
    """Every complete checkpoint (``step_N`` with its metadata) under the run's checkpoint roots, in
    order of tokens seen."""
    from training.checkpoint import is_checkpoint  # startup time: loaded when the command runs

    dirs = [run_dir / "checkpoints", *sorted(run_dir.glob("stage*/checkpoints")), *roots]
    dirs += [d for r in roots for d in sorted(r.glob("stage*"))]
    out = []
    for root in dirs:
        for step_dir in sorted(root.glob("step_*")) if root.is_dir() else []:
            if not is_checkpoint(step_dir):
                continue
            try:
                meta = _meta(step_dir)
            except FLMError:
                continue  # a checkpoint being pruned or damaged: found again (or not) next time
            cfg = meta["config"]
            tokens = int(meta.get("consumed_samples", 0)) * int(cfg["model"]["seq_length"])
            step = int(meta["step"])
            final = step == int(cfg["train"]["steps"])
            out.append(Candidate(step_dir, Path(cfg["output_dir"]), step, tokens, final, _params(cfg["model"])))
    return sorted(out, key=lambda c: (c.tokens, str(c.path)))


def _params(model: dict[str, Any]) -> int:
    """Parameters of a checkpoint's model config (its ``flm_checkpoint.json`` section)."""
    from training.config import ModelConfig  # startup time: loaded when the command runs
    from training.config_base import from_dict
    from training.model_size import total_params

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return total_params(from_dict(ModelConfig, {k: v for k, v in model.items() if k in known}))


def evaluated(run_dir: Path) -> set[str]:
    """The checkpoints already recorded (scored or skipped) in the eval.jsonl files of the run's stages."""
    seen = set()
    for path in [run_dir / EVAL_FILE, *run_dir.glob(f"stage*/{EVAL_FILE}")]:
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    seen.add(json.loads(line)["checkpoint"])
                except (json.JSONDecodeError, KeyError):
                    continue  # a torn last line
    return seen


def pending(run_dir: Path, roots: Sequence[Path], final_only: bool) -> list[Candidate]:
    seen = evaluated(run_dir)
    return [c for c in find_checkpoints(run_dir, roots) if str(c.path) not in seen and (c.final or not final_only)]


def run_is_live(run_dir: Path) -> bool:
    """Whether a training job holds the run directory's lock."""
    from training.checkpoint.lock import LOCK_FILE  # startup time: loaded when the command runs

    path = run_dir / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def evaluate_pending(run_dir: Path, options: EvalOptions, roots: Sequence[Path], *, final_only: bool) -> int:
    """Evaluate every checkpoint not yet recorded; returns how many were scored."""
    scored = 0
    for cand in pending(run_dir, roots, final_only):
        record = evaluate_candidate(cand, options)
        if record is not None:
            write_record(cand, record)
            scored += "iq" in record
    return scored


def evaluate_candidate(cand: Candidate, options: EvalOptions) -> Optional[dict[str, Any]]:
    """The record of one checkpoint: verified, then ``flm iq`` in a child process. A checkpoint that
    fails verification or evaluation is recorded as skipped with the one-line reason (logged too);
    one that vanished meanwhile (pruned by ``keep_last``) gives None."""
    from training.checkpoint import CheckpointError, verify  # startup time: loaded when the command runs

    base = {"checkpoint": str(cand.path), "step": cand.step, "tokens": cand.tokens, "final": cand.final}
    if not cand.path.is_dir():
        return None
    if cand.params > options.max_params:  # before verify: hashing a 1.4 TB checkpoint takes hours on one host
        why = (
            f"{cand.params:.3g} parameters is above --max-params {options.max_params:.3g} (the project backend "
            "holds the whole model in this host's RAM); export with flm export-hf and evaluate with "
            "flm iq --model hf --parallelize"
        )
        log.warning("skipped %s: %s", cand.path, why)
        return {**base, "skipped": why}
    try:
        verify(cand.path)
    except CheckpointError as err:
        log.warning("skipped %s: verification failed: %s", cand.path, err)
        return {**base, "skipped": f"verification failed: {err}"}
    out = cand.run_dir / "iq" / cand.path.name
    cmd = [sys.executable, "-m", "training.cli", "iq", "--model", "flm", "--checkpoint", str(cand.path)]
    cmd += ["--subtasks", options.tasks, "--output-dir", str(out), "--skip-unavailable"]
    if options.limit is not None:
        cmd += ["--limit", str(options.limit)]
    if options.data_dir is not None:
        cmd += ["--data-dir", str(options.data_dir)]
    log.info("evaluating %s (%d tokens)", cand.path, cand.tokens)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=options.timeout)
    except subprocess.TimeoutExpired:
        return {**base, "skipped": f"evaluation took longer than {options.timeout:.0f} s (--timeout)"}
    if proc.returncode != 0:
        if not cand.path.is_dir():
            return None
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "error:" in ln), lines[-1] if lines else "no output")
        log.warning("skipped %s: flm iq exited %d: %s", cand.path, proc.returncode, why)
        return {**base, "skipped": f"flm iq exited {proc.returncode}: {why}"}
    summary = json.loads((out / "results.json").read_text())
    return {**base, "iq": compact(summary, out)}


def write_record(cand: Candidate, record: dict[str, Any]) -> None:
    """Append the record to ``<run_dir>/eval.jsonl`` and the scores to the run's TensorBoard."""
    cand.run_dir.mkdir(parents=True, exist_ok=True)
    with open(cand.run_dir / EVAL_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
    iq = record.get("iq")
    if iq is None:
        return
    from torch.utils.tensorboard import SummaryWriter  # startup time: loaded when there is something to write

    writer = SummaryWriter(str(cand.run_dir / "tensorboard"))
    try:
        scalars = {"iq/flm_iq": iq["flm_iq"], **{f"iq/{c}": v for c, v in iq["categories"].items()}}
        scalars.update({f"iq/{n}": v for n, v in iq["subtasks"].items()})
        for tag, value in scalars.items():
            if value is not None:
                writer.add_scalar(tag, value, global_step=cand.tokens)
    finally:
        writer.close()


def final_record(stage_dir: Path) -> Optional[dict[str, Any]]:
    """The record of a stage's final checkpoint in its eval.jsonl (the last one wins), if any."""
    path = stage_dir / EVAL_FILE
    found = None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("final"):
                found = rec
    return found
