"""``make_trainer``: the trainer of a run's ``engine``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from training.config import RunConfig
from training.data.source import SampleSource
from training.engine.trainer import Trainer
from training.engine.trainer_base import BaseTrainer


def make_trainer(
    cfg: RunConfig,
    *,
    train_source: SampleSource,
    valid_source: Optional[SampleSource] = None,
    output_dir: Optional[Path] = None,
    checkpoint_meta: Optional[dict[str, Any]] = None,
) -> BaseTrainer:
    """The trainer of the run's ``engine`` (the DeepSpeed engine's module, which imports deepspeed,
    only when it is chosen). ``checkpoint_meta``: extra fields recorded in every checkpoint's
    ``flm_checkpoint.json``."""
    if cfg.engine == "deepspeed":
        from training.engine.ds_trainer import DeepSpeedTrainer  # optional heavy dependency: deepspeed

        return DeepSpeedTrainer(
            cfg,
            train_source=train_source,
            valid_source=valid_source,
            output_dir=output_dir,
            checkpoint_meta=checkpoint_meta,
        )
    return Trainer(
        cfg,
        train_source=train_source,
        valid_source=valid_source,
        output_dir=output_dir,
        checkpoint_meta=checkpoint_meta,
    )
