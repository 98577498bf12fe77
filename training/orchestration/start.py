"""How a trainer starts: ``start(trainer, how)``, the one place single and staged runs decide it.

In order of preference: resume (the newest checkpoint that verifies under a root, or a given
checkpoint), else the weights of ``init_from`` (any project checkpoint; logical ones carry Adam's
moments), else a grown checkpoint (a stage's ``grown/``), else from scratch. Every checkpoint a
trainer starts from is checked to hold the model the trainer trains (``check_same_model``) and
verified against its recorded hashes while it loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from training import checkpoint
from training.checkpoint import CheckpointError
from training.engine.trainer_base import BaseTrainer
from training.orchestration.model_check import check_same_model


@dataclass(frozen=True)
class How:
    """Where a trainer may start from; ``start`` takes the first that applies."""

    #: a checkpoint root (its newest checkpoint that verifies, newer damaged ones moved aside) or a
    #: ``step_N`` directory; None: do not resume
    resume: Optional[Path] = None
    #: True when ``resume`` was named by the user: finding nothing there is an error, not a fresh start
    resume_required: bool = False
    #: start at step 0 from the weights of this checkpoint when there is nothing to resume
    init_from: Optional[Path] = None
    #: makes (or finds) the grown checkpoint to start from (weights, moments, masks, data position)
    #: when there is nothing to resume; called only then, so a resumed stage never grows again
    grown: Optional[Callable[[], Path]] = None


@dataclass(frozen=True)
class Started:
    """Where a trainer started: ``kind`` and the checkpoint (None from scratch); ``message`` for the log."""

    kind: Literal["resume", "init_from", "grown", "scratch"]
    source: Optional[Path]
    message: str


def start(trainer: BaseTrainer, how: How) -> Started:
    """Bring ``trainer`` to where ``how`` says it starts (collective); returns where it started."""
    check_hash = trainer.cfg.checkpoint.verify_hash
    model = trainer.cfg.model

    def checked(load):
        def run(path: Path) -> None:
            check_same_model(checkpoint.read_meta(path)["config"]["model"], model, path)
            load(path)

        return run

    if how.resume is not None:
        source = _resume(trainer, how, checked(trainer.load), check_hash)
        if source is not None:
            return Started("resume", source, f"resumed from {source} at step {trainer.step_count}")
    if how.init_from is not None:
        path = checkpoint.resolve(how.init_from)
        checkpoint.load_verified(path, checked(trainer.init_from), check_hash=check_hash)
        return Started("init_from", path, f"initialised weights from {path}")
    if how.grown is not None:
        grown = how.grown()
        checkpoint.load_verified(grown, checked(trainer.init_from), check_hash=check_hash)
        return Started("grown", grown, f"started from the grown checkpoint {grown}")
    if how.resume is not None:
        return Started("scratch", None, f"no checkpoint under {how.resume}; starting fresh")
    return Started("scratch", None, "started from scratch")


def _resume(trainer: BaseTrainer, how: How, load, check_hash: bool) -> Optional[Path]:
    path = how.resume
    assert path is not None
    if checkpoint.is_checkpoint(path):
        checkpoint.load_verified(path, load, check_hash=check_hash)
        return path
    if how.resume_required and not path.is_dir():
        raise CheckpointError(f"checkpoint path {path} does not exist; pass a step_N directory or a checkpoint root")
    source = checkpoint.resume_verified(path, load, check_hash=check_hash)
    if source is None and how.resume_required:
        raise CheckpointError(
            f"no checkpoint in {path}: neither {checkpoint.META_FILE} nor step_N "
            "directories; pass a step_N directory or a checkpoint root"
        )
    return source
