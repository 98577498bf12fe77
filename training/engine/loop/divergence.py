"""The divergence guard: the NaN policy (``train.on_nan``), loss spikes and runs of bad steps
(``divergence:``, docs/faults.md).

Every rank sees the same global-batch loss, so every rank's guard decides alike. The guard keeps
the window of recent good losses, the reason the last step was skipped, the consecutive-skip count
and the number of rollbacks done; the rollback count is the state a checkpoint carries
(``state_dict``), so a requeued run keeps counting towards ``divergence.max_rollbacks``.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Any, Optional

from training.config import DivergenceConfig
from training.engine.loop.step_result import StepResult
from training.errors import FLMError

log = logging.getLogger(__name__)


class NonFiniteLossError(FLMError, RuntimeError):
    """The loss was not finite and ``train.on_nan`` is ``raise`` (the message names the step)."""

    exit_code = 1


class DivergenceError(FLMError, RuntimeError):
    """Too many skipped or spiking steps in a row (``divergence:``); the message names the steps."""

    exit_code = 1


class DivergenceGuard:
    """``check`` runs inside an engine's step, before the update; ``observe`` after the step;
    ``diverged`` then says whether ``divergence.max_consecutive`` bad steps came in a row, and
    ``before_rollback`` raises for ``action: stop`` or once ``max_rollbacks`` are used up."""

    def __init__(self, cfg: DivergenceConfig, *, on_nan: str, rank: int):
        self.cfg = cfg
        self.on_nan = on_nan
        self.rank = rank
        self.recent_losses: collections.deque = collections.deque(maxlen=cfg.window)
        #: why the step just checked was skipped (None: it was not), and its loss as checked
        self.skip_reason: Optional[str] = None
        self.checked_loss: Optional[float] = None
        #: the guard's skip reason of the last observed step, and the skipped (non-finite or
        #: spiking) steps in a row up to it
        self.reason: Optional[str] = None
        self.consecutive = 0
        self.rollbacks = 0

    # ---------------------------------------------------------------- per step
    def check(self, loss: float, step: int, consumed_samples: int) -> bool:
        """True when the step's update must be skipped (a non-finite loss under ``on_nan=skip``, or
        a spike); raises ``NonFiniteLossError`` for a non-finite loss under ``on_nan=raise``."""
        self.checked_loss = loss
        self.skip_reason = None
        if not math.isfinite(loss):
            if self.on_nan == "raise":
                raise NonFiniteLossError(
                    f"loss is {loss} at step {step} (consumed samples {consumed_samples}); "
                    "set train.on_nan=skip to skip such steps, or lower train.lr"
                )
            self.skip_reason = "non_finite"
            if self.rank == 0:
                log.warning("step %d: loss is %s; update skipped", step, loss)
            return True
        if self._is_spike(loss):
            self.skip_reason = "spike"
            if self.rank == 0:
                mean = sum(self.recent_losses) / len(self.recent_losses)
                log.warning("step %d: loss spike %.4g (recent mean %.4g); update skipped", step, loss, mean)
            return True
        return False

    def _is_spike(self, loss: float) -> bool:
        d = self.cfg
        if not d.spike_sigmas or len(self.recent_losses) < d.window:
            return False
        mean = sum(self.recent_losses) / len(self.recent_losses)
        std = math.sqrt(sum((x - mean) ** 2 for x in self.recent_losses) / len(self.recent_losses))
        return loss > mean + d.spike_sigmas * std and loss > d.spike_ratio * mean

    def observe(self, result: StepResult) -> Optional[str]:
        """Account for a finished step; returns the guard's skip reason (None for a step that was
        not skipped, and for one the optimizer itself skipped, e.g. on overflow)."""
        self.reason = self.skip_reason if result.skipped else None
        self.consecutive = self.consecutive + 1 if self.reason else 0
        if not result.skipped and math.isfinite(result.loss):
            self.recent_losses.append(result.loss)
        return self.reason

    def record_fields(self) -> dict[str, Any]:
        """The metrics-record fields of the observed step: ``skip_reason``/``consecutive_skips`` for
        a skipped one, ``spike_loss`` for a spike, ``rollbacks`` once there was one."""
        fields: dict[str, Any] = {}
        if self.reason:
            fields.update(skip_reason=self.reason, consecutive_skips=self.consecutive)
        if self.reason == "spike":
            fields["spike_loss"] = self.checked_loss
        if self.rollbacks:
            fields["rollbacks"] = self.rollbacks
        return fields

    def new_run(self) -> None:
        """A new ``fit``: no bad steps in a row yet (the window and the rollback count stay)."""
        self.reason = None
        self.consecutive = 0

    def diverged(self) -> bool:
        return self.consecutive >= self.cfg.max_consecutive

    # ---------------------------------------------------------------- stop or roll back
    def before_rollback(self, step: int, consumed_samples: int) -> str:
        """After ``diverged``: raises ``DivergenceError`` under ``action: stop`` or when
        ``max_rollbacks`` are used up; otherwise returns what happened (for the rollback's
        messages). The caller reloads, then calls ``rolled_back``."""
        if self.reason is None:
            raise RuntimeError("internal: before_rollback is for a run of skipped steps (see diverged)")
        what = (
            f"{self.consecutive} skipped steps in a row ({self.reason.replace('_', '-')} loss) up to step {step}, "
            f"consumed samples {consumed_samples}"
        )
        if self.cfg.action == "stop":
            raise DivergenceError(
                f"{what}; the run diverged and stops without saving: resume from the last checkpoint with a "
                "lower train.lr, or set divergence.action=rollback"
            )
        if self.rollbacks >= self.cfg.max_rollbacks:
            raise DivergenceError(
                f"{what}, after {self.rollbacks} rollbacks (divergence.max_rollbacks); "
                "the run stops: lower train.lr or inspect the data around these samples"
            )
        return what

    def rolled_back(self) -> None:
        """The caller reloaded a checkpoint and skipped the bad data: count it, start a new run of steps."""
        self.rollbacks += 1
        self.consecutive = 0

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records (``divergence`` in ``flm_checkpoint.json``)."""
        return {"rollbacks": self.rollbacks}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        """Restore ``state_dict``'s fields; ``None`` (a checkpoint from before the field existed)
        means no rollbacks."""
        self.rollbacks = int((state or {}).get("rollbacks", 0))
