"""``flm train``: config -> data sources -> trainer -> fit, with resume and init-from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from training import checkpoint
from training.checkpoint import CheckpointError
from training.checkpoint.lock import lock_if_rank0, refuse_used
from training.config import RunConfig
from training.data.build import run_sources
from training.engine.factory import make_trainer
from training.engine.parallel import teardown
from training.errors import UsageError
from training.model_check import check_same_model
from training.stage_plans import load_train_args
from training.stages import StageEndHook, run_stages

log = logging.getLogger(__name__)


def train_from_cli(args, stage_end: Optional[StageEndHook] = None) -> int:
    """``flm train CONFIG [overrides] [--resume [CKPT]] [--init-from CKPT] [--stage N]``; ``stage_end``
    runs after each stage of a staged run (``training.stages.StageEndHook``)."""
    cfg = load_train_args(args)
    if cfg.stages:
        if args.resume not in (None, "latest"):
            raise UsageError("--resume: a staged run resumes from its own output_dir; use --resume without a path")
        if args.stage is not None and not 0 <= args.stage < len(cfg.stages):
            raise UsageError(f"--stage {args.stage} is out of range; the run has stages 0..{len(cfg.stages) - 1}")
        return run_stages(
            cfg, resume=args.resume is not None, only_stage=args.stage, init_from=args.init_from, stage_end=stage_end
        )
    if args.stage is not None:
        raise UsageError("--stage needs a run config with a stages: list")
    return run_training(cfg, resume=args.resume, init_from=args.init_from)


def run_training(cfg: RunConfig, *, resume: Optional[str] = None, init_from: Optional[str] = None) -> int:
    """Train one stage (collective over all ranks): from scratch, from ``resume`` ("latest" or a
    path) or from the weights of ``init_from``."""
    ckpt_root = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.output_dir) / "checkpoints"
    if resume is None:
        refuse_used(ckpt_root, cfg.output_dir)
    lock = lock_if_rank0(cfg.output_dir)
    try:
        return _train(cfg, resume, init_from)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: RunConfig, resume: Optional[str], init_from: Optional[str]) -> int:
    train_src, valid_src = run_sources(cfg)
    trainer = make_trainer(cfg, train_source=train_src, valid_source=valid_src)
    rank0 = trainer.layout.rank == 0
    check_hash = cfg.checkpoint.verify_hash
    try:
        source = None

        def load(path: Path) -> None:
            check_same_model(checkpoint.read_meta(path)["config"]["model"], cfg.model, path)
            trainer.load(path)

        if resume == "latest":
            source = checkpoint.resume_verified(trainer.checkpoint_root(), load, check_hash=check_hash)
            if source is None and rank0:
                log.info("no checkpoint under %s; starting fresh", trainer.checkpoint_root())
        elif resume is not None:
            path = Path(resume)
            if checkpoint.is_checkpoint(path):
                source = path
                checkpoint.load_verified(source, load, check_hash=check_hash)
            else:  # a checkpoint root: its latest, with the fallback
                if not path.is_dir():
                    raise CheckpointError(
                        f"checkpoint path {path} does not exist; pass a step_N directory or a checkpoint root"
                    )
                source = checkpoint.resume_verified(path, load, check_hash=check_hash)
                if source is None:
                    raise CheckpointError(
                        f"no checkpoint in {path}: neither {checkpoint.META_FILE} nor step_N "
                        "directories; pass a step_N directory or a checkpoint root"
                    )
        if source is not None:
            if rank0:
                log.info("resumed from %s at step %d", source, trainer.step_count)
        elif init_from is not None:
            path = checkpoint.resolve(init_from)

            def start_from(path: Path) -> None:
                check_same_model(checkpoint.read_meta(path)["config"]["model"], cfg.model, path)
                trainer.init_from(path)

            checkpoint.load_verified(path, start_from, check_hash=check_hash)
            if rank0:
                log.info("initialised weights from %s", path)
        trainer.fit()
        if rank0:
            log.info(
                "done at step %d; metrics in %s, checkpoints in %s",
                trainer.step_count,
                trainer.output_dir / "metrics.jsonl",
                trainer.checkpoint_root(),
            )
    finally:
        teardown()
    return 0
