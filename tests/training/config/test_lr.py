"""The LR schedule restated in the config layer equals the scheduler the trainer builds, and FLM-101B's
stages start at the paper's learning rates."""

from __future__ import annotations

import pytest

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.helpers import REPO
from training.config import TrainConfig
from training.config.lr import lr_at, peak_for
from training.engine.optim import build_scheduler, stage_start_lr
from training.orchestration.stage_plans import load_run

FLM = REPO / "configs" / "runs" / "flm101b.yaml"


class _Optimizer:
    def __init__(self) -> None:
        self.param_groups = [{"params": []}]


@pytest.mark.parametrize("style", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("offset", [0, 7])
def test_lr_at_equals_the_trainers_scheduler_at_every_step(style, offset):
    train = TrainConfig(
        steps=30,
        lr=3e-3,
        min_lr=1e-4,
        warmup_steps=5,
        lr_decay_style=style,
        lr_decay_steps=40,
        schedule_offset_steps=offset,
    )
    sched = build_scheduler(train, _Optimizer())
    for n in range(1, 34):
        sched.step(increment=1)
        step = offset + n
        want = lr_at(step, peak=3e-3, min_lr=1e-4, warmup=5, decay=40, style=style)
        assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=1e-15), step


def test_peak_for_puts_the_start_lr_at_the_step_or_says_why_not():
    for step in (3, 12, 39):
        peak = peak_for(2e-4, step, min_lr=1e-5, warmup=5, decay=40, style="cosine")
        assert lr_at(step, peak=peak, min_lr=1e-5, warmup=5, decay=40, style="cosine") == pytest.approx(2e-4)
    with pytest.raises(ValueError, match="below min_lr"):
        peak_for(1e-6, 12, min_lr=1e-5, warmup=5, decay=40, style="cosine")
    with pytest.raises(ValueError, match="at min_lr"):
        peak_for(2e-4, 41, min_lr=1e-5, warmup=5, decay=40, style="cosine")


def test_flm101b_starts_its_stages_at_the_papers_learning_rates():
    """Table 1 of arXiv 2309.03852: 4e-4, 3.4e-4, 2e-4 at the stages' starts, cosine to 6e-6 at the
    end; the warmups 2000 steps, then re-warmups of 100 and 109 steps. The plan's column is the
    trainer's scheduler (stage_start_lr), and so is the LR of the last step."""
    from training.plan.hardware import GPUS
    from training.plan.planner import PlanOptions, plan_run

    run = load_run(FLM)
    starts = [stage_start_lr(s.config.train, first=s.index == 0) for s in run.stages]
    assert starts == pytest.approx([4e-4, 3.4e-4, 2e-4], rel=1e-9)
    plan = plan_run(run, PlanOptions(gpu=GPUS["a800"], gpus=192, tflops=(165.0,)))
    assert [s.start_lr for s in plan.stages] == starts
    trains = [s.config.train for s in run.stages]
    assert [t.warmup_steps for t in trains[:1]] + [t.rewarmup_steps for t in trains[1:]] == [2000, 100, 109]
    last = trains[-1]
    sched = build_scheduler(last, _Optimizer())
    sched.step(increment=last.steps)
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(6e-6, rel=1e-4)
