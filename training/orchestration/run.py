"""``flm train``: config -> stages -> trainer -> fit, with resume and init-from."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from training.checkpoint.lock import lock_if_rank0, refuse_used
from training.data.build import run_sources
from training.engine import tracking
from training.engine.factory import make_trainer
from training.engine.parallel import teardown
from training.errors import UsageError
from training.orchestration.job_tracker import open_job_tracker
from training.orchestration.stage_plans import Stage, StagedRun, load_train_args
from training.orchestration.stages import run_stages
from training.orchestration.start import How, start

log = logging.getLogger(__name__)


def train_from_cli(args, preflight: Optional[Callable[[StagedRun], None]] = None) -> int:
    """``flm train CONFIG [overrides] [--resume [CKPT]] [--init-from CKPT] [--stage N]``; ``preflight``
    checks the run before anything trains (the IQ task names of ``iq_eval``: a layer above this one)."""
    run = load_train_args(args)
    if preflight is not None:
        preflight(run)
    tracking.check_available(run.config.logging)  # every rank, before anything starts
    if run.staged:
        if args.resume not in (None, "latest"):
            raise UsageError("--resume: a staged run resumes from its own output_dir; use --resume without a path")
        if args.stage is not None and not 0 <= args.stage < len(run.stages):
            raise UsageError(f"--stage {args.stage} is out of range; the run has stages 0..{len(run.stages) - 1}")
        return run_stages(run, resume=args.resume is not None, only_stage=args.stage, init_from=args.init_from)
    if args.stage is not None:
        raise UsageError("--stage needs a run config with a stages: list")
    return run_training(run.stages[0], resume=args.resume, init_from=args.init_from)


def run_training(stage: Stage, *, resume: Optional[str] = None, init_from: Optional[str] = None) -> int:
    """Train one stage (collective over all ranks): from scratch, from ``resume`` ("latest" or a
    path) or from the weights of ``init_from``."""
    cfg = stage.config
    if resume is None:
        refuse_used(stage.checkpoint_root, cfg.output_dir)
    lock = lock_if_rank0(cfg.output_dir)
    try:
        return _train(stage, resume, init_from)
    finally:
        if lock is not None:
            lock.release()


def _train(stage: Stage, resume: Optional[str], init_from: Optional[str]) -> int:
    cfg = stage.config
    train_src, valid_src = run_sources(cfg)
    trainer = make_trainer(cfg, train_source=train_src, valid_source=valid_src)
    rank0 = trainer.layout.rank == 0
    tracker = None
    try:
        tracker = open_job_tracker(cfg, Path(cfg.output_dir))
        how = How(
            resume=None if resume is None else stage.checkpoint_root if resume == "latest" else Path(resume),
            resume_required=resume not in (None, "latest"),
            init_from=None if init_from is None else Path(init_from),
        )
        started = start(trainer, how)
        if rank0:
            log.info("%s", started.message)
        trainer.fit(tracker=tracker)
        if rank0:
            log.info(
                "done at step %d; metrics in %s, checkpoints in %s",
                trainer.step_count,
                trainer.output_dir / "metrics.jsonl",
                trainer.checkpoint_root(),
            )
    finally:
        if tracker is not None:
            tracker.close()
        teardown()
    return 0
