"""The LR schedule's value at a step, and the peak that puts a given value at a step.

Restates megatron-core's ``OptimizerParamScheduler.get_lr`` (linear warmup from 0, then cosine /
linear / constant decay to ``min_lr``) as a pure function, because the config layer derives a
stage's peak LR from its stated start LR (``stages[i].start_lr``) and may not import megatron;
``tests/training/config/test_lr.py`` checks it equal to the scheduler the trainer builds
(``training.engine.optim.build_scheduler``) at every step.
"""

from __future__ import annotations

import math


def _decay_steps(warmup: int, decay: int) -> int:
    return max(decay, warmup + 1)  # as build_scheduler hands them to megatron


def coefficient(step: int, *, warmup: int, decay: int, style: str) -> tuple[str, float]:
    """Where ``step`` (1-based, from the schedule's start) is: ``("warmup", step / warmup)`` — the LR
    is that fraction of the peak — or ``("decay", c)`` — the LR is ``min_lr + c (peak - min_lr)``."""
    decay = _decay_steps(warmup, decay)
    if warmup > 0 and step <= warmup:
        return "warmup", step / warmup
    if style == "constant":
        return "decay", 1.0
    if step > decay:
        return "decay", 0.0
    ratio = (step - warmup) / (decay - warmup)
    return "decay", (1.0 - ratio) if style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)


def lr_at(step: int, *, peak: float, min_lr: float, warmup: int, decay: int, style: str) -> float:
    """The schedule's LR at ``step`` (before any re-warmup factor)."""
    phase, c = coefficient(step, warmup=warmup, decay=decay, style=style)
    return peak * c if phase == "warmup" else min_lr + c * (peak - min_lr)


def peak_for(start_lr: float, step: int, *, min_lr: float, warmup: int, decay: int, style: str) -> float:
    """The peak LR whose schedule passes through ``start_lr`` at ``step``; ValueError (with the reason)
    when none does (the schedule is at its floor there, or ``start_lr`` is below ``min_lr``)."""
    phase, c = coefficient(step, warmup=warmup, decay=decay, style=style)
    if phase == "warmup":
        return start_lr / c
    if start_lr < min_lr:
        raise ValueError(f"{start_lr:g} is below min_lr {min_lr:g}")
    if c <= 0.0:
        raise ValueError(f"the schedule is at min_lr {min_lr:g} at step {step}; no peak gives {start_lr:g} there")
    return min_lr + (start_lr - min_lr) / c
