"""The divergence guard (training/engine/loop/divergence.py): the NaN policy, spikes, runs of bad
steps, stop or rollback, and the rollback count a checkpoint carries. The CLI drills (NaN storm, a
spike rolled back, the count carried over a resume) are in tests/training/test_faults.py."""

from __future__ import annotations

import logging

import pytest

from training.config import DivergenceConfig
from training.engine.loop.divergence import DivergenceError, DivergenceGuard, NonFiniteLossError
from training.engine.loop.step_result import StepResult


def _guard(on_nan="skip", **divergence) -> DivergenceGuard:
    return DivergenceGuard(DivergenceConfig(**divergence), on_nan=on_nan, rank=0)


def _run(guard: DivergenceGuard, losses, start=1):
    """Check and observe one step per loss, as an engine's step and ``fit`` do; the skip decisions."""
    out = []
    for i, loss in enumerate(losses, start):
        skipped = guard.check(loss, i, consumed_samples=8 * (i - 1))
        guard.observe(StepResult(i, loss, None, 1e-3, skipped))
        out.append(skipped)
    return out


def test_non_finite_loss_raises_under_on_nan_raise():
    guard = _guard(on_nan="raise")
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at step 4 \(consumed samples 24\); set train.on_nan=skip"
    ):
        guard.check(float("nan"), 4, consumed_samples=24)


def test_non_finite_losses_are_skipped_counted_and_recorded(caplog):
    guard = _guard()
    with caplog.at_level(logging.WARNING, logger="training.engine.loop.divergence"):
        assert _run(guard, [3.0, float("inf"), float("nan")]) == [False, True, True]
    assert "step 2: loss is inf; update skipped" in caplog.text
    assert guard.consecutive == 2
    assert guard.record_fields() == {"skip_reason": "non_finite", "consecutive_skips": 2}
    assert list(guard.recent_losses) == [3.0]
    _run(guard, [2.9], start=4)
    assert guard.consecutive == 0 and guard.record_fields() == {}


def test_spike_needs_a_full_window_and_both_thresholds():
    guard = _guard(spike_sigmas=3, spike_ratio=1.5, window=3)
    # the window is not full yet: a huge loss is no spike
    assert _run(guard, [2.0, 100.0]) == [False, False]
    guard = _guard(spike_sigmas=3, spike_ratio=1.5, window=3)
    assert _run(guard, [2.0, 2.1, 1.9, 2.5, 50.0]) == [False, False, False, False, True]
    assert guard.record_fields() == {"skip_reason": "spike", "consecutive_skips": 1, "spike_loss": 50.0}
    # far out in sigmas but under spike_ratio x the mean: not a spike
    guard = _guard(spike_sigmas=3, spike_ratio=1.5, window=3)
    assert _run(guard, [2.0, 2.0, 2.0, 2.9]) == [False, False, False, False]


def test_a_step_the_optimizer_skipped_is_no_divergence():
    """An update skipped by the optimizer itself (e.g. an fp16 overflow) neither counts as a bad
    step nor enters the window."""
    guard = _guard()
    assert guard.check(2.0, 1, consumed_samples=0) is False
    assert guard.observe(StepResult(1, 2.0, None, 1e-3, skipped=True)) is None
    assert guard.consecutive == 0 and not guard.recent_losses


def test_stop_raises_after_max_consecutive():
    guard = _guard(max_consecutive=2)
    _run(guard, [float("nan")])
    assert not guard.diverged()
    _run(guard, [float("nan")], start=2)
    assert guard.diverged()
    with pytest.raises(
        DivergenceError,
        match=r"^2 skipped steps in a row \(non-finite loss\) up to step 2, consumed samples 16; the run diverged and stops without saving",
    ):
        guard.before_rollback(2, consumed_samples=16)


def test_rollbacks_are_counted_recorded_and_bounded():
    guard = _guard(max_consecutive=1, action="rollback", max_rollbacks=2)
    for n in (1, 2):
        _run(guard, [float("nan")])
        assert guard.diverged()
        assert guard.before_rollback(1, consumed_samples=8).startswith("1 skipped steps in a row (non-finite loss)")
        guard.rolled_back()
        assert guard.rollbacks == n and guard.consecutive == 0
    _run(guard, [2.0], start=2)
    assert guard.record_fields() == {"rollbacks": 2}
    _run(guard, [float("nan")], start=3)
    with pytest.raises(
        DivergenceError, match=r"up to step 3, consumed samples 16, after 2 rollbacks \(divergence.max_rollbacks\)"
    ):
        guard.before_rollback(3, consumed_samples=16)


def test_rollback_count_round_trips_through_the_checkpoint_state():
    guard = _guard(max_consecutive=1, action="rollback", max_rollbacks=2)
    _run(guard, [float("nan")])
    guard.before_rollback(1, consumed_samples=8)
    guard.rolled_back()
    state = guard.state_dict()
    assert state == {"rollbacks": 1}
    resumed = _guard(max_consecutive=1, action="rollback", max_rollbacks=2)
    resumed.load_state_dict(state)
    assert resumed.rollbacks == 1
    # the resumed run has one rollback left, not max_rollbacks afresh
    _run(resumed, [float("nan")])
    resumed.before_rollback(1, consumed_samples=8)
    resumed.rolled_back()
    _run(resumed, [float("nan")], start=2)
    with pytest.raises(DivergenceError, match="after 2 rollbacks"):
        resumed.before_rollback(2, consumed_samples=16)
    # a checkpoint written before the count was recorded
    old = _guard()
    old.rollbacks = 3
    old.load_state_dict(None)
    assert old.rollbacks == 0


def test_new_run_forgets_the_bad_steps_in_a_row_but_not_the_rollbacks():
    guard = _guard(max_consecutive=3)
    _run(guard, [2.0, float("nan"), float("nan")])
    guard.rollbacks = 1
    guard.new_run()
    assert guard.consecutive == 0 and guard.record_fields() == {"rollbacks": 1}
    assert list(guard.recent_losses) == [2.0]
