"""The μScaling fit L(N) = a·N^b + c: it recovers known laws, its leave-one-out band, its errors."""

from __future__ import annotations

import math

import pytest

from training.mup.fit import FitError, PowerLaw, fit_power_law, leave_one_out

TRUE = PowerLaw(a=40.0, b=-0.3, c=2.5)
SIZES = [2e4, 5e4, 1.2e5, 3e5, 8e5]


def test_fit_recovers_a_known_law():
    law = fit_power_law(SIZES, [TRUE(n) for n in SIZES])
    assert law.a == pytest.approx(TRUE.a, rel=1e-3)
    assert law.b == pytest.approx(TRUE.b, rel=1e-4)
    assert law.c == pytest.approx(TRUE.c, rel=1e-4)
    assert law.rms < 1e-8
    assert law(1.6e7) == pytest.approx(TRUE(1.6e7), rel=1e-6)


def test_fit_with_three_points_interpolates_them():
    sizes = SIZES[:3]
    law = fit_power_law(sizes, [TRUE(n) for n in sizes])
    assert [law(n) for n in sizes] == pytest.approx([TRUE(n) for n in sizes], rel=1e-6)


def test_fit_of_noisy_points_stays_close():
    noise = [1.004, 0.997, 1.002, 0.998, 1.001]  # +-0.4 %, as seeds of a short run give
    law = fit_power_law(SIZES, [TRUE(n) * e for n, e in zip(SIZES, noise)])
    target = 4 * SIZES[-1]
    assert law(target) == pytest.approx(TRUE(target), rel=0.02)


def test_leave_one_out_band_brackets_the_truth_when_one_point_is_off():
    losses = [TRUE(n) for n in SIZES]
    losses[2] *= 1.03  # one bad proxy
    target = 1.6e7
    loo = leave_one_out(SIZES, losses, target)
    assert loo.errors == [None] * len(SIZES)
    # the refit without the bad point is the true law; the others are pulled by it
    assert loo.predictions[2] == pytest.approx(TRUE(target), rel=1e-4)
    lo, hi = loo.band
    assert lo <= TRUE(target) * (1 + 1e-6) and hi >= TRUE(target) * (1 - 1e-6) and hi - lo > 1e-3
    assert min(loo.predictions) == lo and max(loo.predictions) == hi


def test_leave_one_out_of_an_exact_law_is_a_point():
    loo = leave_one_out(SIZES, [TRUE(n) for n in SIZES], 1.6e7)
    lo, hi = loo.band
    assert lo == pytest.approx(hi, rel=1e-5) == pytest.approx(TRUE(1.6e7), rel=1e-5)


def test_errors():
    with pytest.raises(FitError, match="at least 3 points"):
        fit_power_law(SIZES[:2], [3.0, 2.9])
    with pytest.raises(FitError, match="does not fall with size"):
        fit_power_law(SIZES[:3], [3.0, 3.1, 3.2])
    with pytest.raises(FitError, match="finite"):
        fit_power_law(SIZES[:3], [3.0, math.nan, 2.0])
    with pytest.raises(FitError, match="distinct"):
        fit_power_law([1e4, 1e4, 2e4], [3.0, 2.9, 2.5])
    with pytest.raises(FitError, match="leave-one-out band needs at least 4"):
        leave_one_out(SIZES[:3], [TRUE(n) for n in SIZES[:3]], 1e7)
