"""Run-level LR schedules of staged runs: values at stage boundaries, per-stage peaks, re-warmup
after growth, and a scheduler restored from its state continuing exactly."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import REPO
from training.config_base import ConfigError
from training.engine.optim import build_scheduler
from training.orchestration.stage_plans import load_run

DRYRUN = REPO / "configs" / "runs" / "dryrun.yaml"


class _Optimizer:
    """What megatron's scheduler touches: param_groups."""

    def __init__(self) -> None:
        self.param_groups = [{"params": [torch.zeros(1)]}]


def lrs(train, steps=None):
    sched = build_scheduler(train, _Optimizer())
    out = []
    for _ in range(steps or train.steps):
        sched.step(increment=1)
        out.append(sched.optimizer.param_groups[0]["lr"])
    return out, sched


def schedule(kind, *extra):
    warmup = [] if kind == "per_stage" else ["lr_schedule.warmup_tokens=20480"]  # per_stage refuses it
    run = load_run(DRYRUN, [f"lr_schedule.kind={kind}", *warmup, *extra])
    return [stage.config.train for stage in run.stages]


def cosine(step, warmup, decay, lr, min_lr):
    if step <= warmup:
        return lr * step / warmup
    t = (step - warmup) / (decay - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def test_global_schedule_continues_across_stages():
    """Each stage enters the run-level cosine where the previous one stopped, scaled to its own peak."""
    trains = schedule("global")
    total = sum(t.steps for t in trains)
    assert [t.schedule_offset_steps for t in trains] == [0, trains[0].steps, trains[0].steps + trains[1].steps]
    assert all(t.lr_decay_steps == total and t.warmup_steps == 10 for t in trains)
    for t in trains:
        got, _ = lrs(t)
        want = [cosine(t.schedule_offset_steps + n, 10, total, t.lr, t.min_lr) for n in range(1, t.steps + 1)]
        assert got == pytest.approx(want, rel=1e-12)
    # one peak for the whole run: no jump at the boundary beyond one step of the cosine
    same_peak = schedule("global", "stages.1.train.lr=2.0e-3", "stages.1.train.min_lr=2.0e-4")
    last0, first1 = lrs(same_peak[0])[0][-1], lrs(same_peak[1])[0][0]
    assert first1 < last0 and (last0 - first1) / last0 < 0.02


def test_flops_progress_places_each_stage_at_its_share_of_the_compute():
    """``lr_schedule.progress: flops``: the cosine runs over the run's FLOPs; a stage's offset is the
    FLOPs before it, in its own steps, so the LR is continuous at every boundary and the cheap small
    stage leaves most of the decay to the grown ones."""
    from training.model_size import flops_per_token

    run = load_run(DRYRUN, ["lr_schedule.kind=global", "lr_schedule.warmup_tokens=20480", "lr_schedule.progress=flops"])
    trains = [s.config.train for s in run.stages]
    flops_step = [
        flops_per_token(s.config.model) * t.global_batch_size * s.config.model.seq_length
        for s, t in zip(run.stages, trains)
    ]
    total = sum(f * t.steps for f, t in zip(flops_step, trains))
    before = 0.0
    for f, t in zip(flops_step, trains):
        assert t.schedule_offset_steps == int(before // f)
        assert t.lr_decay_steps == math.ceil(total / f)
        assert t.warmup_steps == math.ceil(20480 * flops_step[0] / (16 * 128) / f)
        before += f * t.steps
    # continuous across the boundaries (same peak): within one step of the cosine
    same = load_run(
        DRYRUN,
        [
            "lr_schedule.kind=global",
            "lr_schedule.warmup_tokens=20480",
            "lr_schedule.progress=flops",
            "stages.1.train.lr=2.0e-3",
            "stages.1.train.min_lr=2.0e-4",
        ],
    )
    last0, first1 = lrs(same.stages[0].config.train)[0][-1], lrs(same.stages[1].config.train)[0][0]
    assert abs(last0 - first1) / last0 < 0.02
    # the small stage ends higher on the cosine than under progress: tokens
    by_tokens = schedule("global", "stages.1.train.lr=2.0e-3", "stages.1.train.min_lr=2.0e-4")
    assert lrs(same.stages[0].config.train)[0][-1] > lrs(by_tokens[0])[0][-1]


@pytest.mark.parametrize("kind", ["per_stage", "equivalent_step"])
def test_flops_progress_is_refused_where_stages_are_placed_by_tokens(kind):
    with pytest.raises(ConfigError) as info:
        schedule(kind, "lr_schedule.progress=flops")
    assert info.value.key == "lr_schedule.progress"


def test_per_stage_schedule_rewarms_every_stage():
    trains = schedule("per_stage")
    got, _ = lrs(trains[1])
    assert got[0] < got[trains[1].warmup_steps]  # warms up again after growth
    assert got[-1] == pytest.approx(trains[1].min_lr)


def test_rewarmup_after_growth():
    trains = schedule("global", "lr_schedule.rewarmup_steps=4")
    assert trains[0].rewarmup_steps == 0 and trains[1].rewarmup_steps == 4
    plain, _ = lrs(schedule("global")[1])
    warm, _ = lrs(trains[1])
    assert warm[:5] == pytest.approx([p * min(1, n / 4) for n, p in zip(range(1, 6), plain[:5])], rel=1e-12)
    assert warm[4:] == pytest.approx(plain[4:], rel=1e-12)


def test_equivalent_step_enters_where_given():
    trains = schedule(
        "equivalent_step", "stages.1.growth.equivalent_tokens=81920", "stages.2.growth.equivalent_tokens=245760"
    )
    assert [t.schedule_offset_steps for t in trains] == [0, 81920 // (16 * 128), 245760 // (16 * 128)]
    run = load_run(DRYRUN, ["lr_schedule.kind=equivalent_step"])  # not given: estimated when the stage starts
    assert run.stages[1].entered_at(40960).config.train.schedule_offset_steps == 40960 // (16 * 128)
    with pytest.raises(ConfigError) as info:
        load_run(DRYRUN, ["lr_schedule.kind=equivalent_step", "lr_schedule.size_exponent=1.5"])
    assert info.value.key == "lr_schedule.size_exponent"


@pytest.mark.parametrize("kind", ["per_stage", "global"])
def test_restored_scheduler_continues_exactly(kind):
    """Resume in the middle of a stage: a scheduler built from the config and loaded from the saved
    state gives the same LRs as the uninterrupted one."""
    train = schedule(kind, *(["lr_schedule.rewarmup_steps=6"] if kind == "global" else []))[1]
    full, _ = lrs(train)
    _, first = lrs(train, steps=5)
    second = build_scheduler(train, _Optimizer())
    second.load_state_dict(first.state_dict())
    rest = []
    for _ in range(train.steps - 5):
        second.step(increment=1)
        rest.append(second.optimizer.param_groups[0]["lr"])
    assert rest == full[5:]
