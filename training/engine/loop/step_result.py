"""What an engine's ``step`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class StepResult:
    step: int
    loss: float
    grad_norm: Optional[float]
    lr: float
    skipped: bool
