"""The checkpointer of ``fit``: where checkpoints go and when ``fit`` saves (the engine's ``save``
writes them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from training import checkpoint
from training.checkpoint.integrity import resume_verified
from training.config import CheckpointConfig


class Checkpointer:
    """The save cadence of ``checkpoint:``: every ``save_interval`` steps after a good step (so a
    rollback never returns into a run of bad steps), the last step always (``save_if_missing``)."""

    def __init__(self, cfg: CheckpointConfig, output_dir: Path):
        self.cfg = cfg
        #: ``checkpoint.dir``, else ``<output_dir>/checkpoints``
        self.root = Path(cfg.dir) if cfg.dir else output_dir / "checkpoints"

    def after_step(self, step: int, *, until: int, good: bool, save: Callable[[], Any]) -> None:
        """The periodic save: at multiples of ``save_interval`` (never ``until``, which
        ``save_if_missing`` saves) when the step was not skipped by the divergence guard."""
        if self.cfg.save_interval and step % self.cfg.save_interval == 0 and step != until and good:
            save()

    def save_if_missing(self, step: int, save: Callable[[], Any]) -> None:
        """Save ``step`` unless its checkpoint exists (saved by the cadence, or resumed from)."""
        if not checkpoint.is_checkpoint(self.root / checkpoint.step_dir_name(step)):
            save()

    def newest_verified(self, load: Callable[[Path], Any]) -> Optional[Path]:
        """Load the newest checkpoint under the root that verifies (a rollback's target; newer
        damaged ones are moved aside); None when there is none. Collective."""
        return resume_verified(self.root, load, check_hash=self.cfg.verify_hash)
