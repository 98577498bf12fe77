"""The μScaling fit: loss against model size, L(N) = a·N^b + c, and its leave-one-out band.

Pure numerics (numpy, scipy), no model. ``fit_power_law`` fits the three parameters with
``scipy.optimize.curve_fit`` (trust-region reflective, bounds a > 0, b in [-B_LIMIT, 0), c >= 0:
the loss falls with size towards an irreducible floor) started from the best point of a
one-dimensional scan over b, where the model is linear in (a, c) and least squares solves it
exactly; the scan makes the start robust (curve_fit on power laws is sensitive to it). N is
divided by its largest value inside the fit, so the powers stay in floating-point range; ``a`` is
reported for N in parameters.

``leave_one_out`` refits without each point in turn and predicts the target with each refit: the
spread of those predictions (their min and max) is the confidence band of the prediction (how much
it depends on any single proxy). It needs at least four points (each refit keeps three, as many
as the parameters).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from training.errors import FLMError

#: the steepest exponent allowed (losses fall far slower than N^-3 with size)
B_LIMIT = 3.0
MIN_POINTS = 3


class FitError(FLMError):
    """The power law could not be fitted to the points (the message says why and what to check)."""

    exit_code = 1


@dataclass(frozen=True)
class PowerLaw:
    """L(N) = a·N^b + c; ``rms`` is the root-mean-square residual of the fit on its points."""

    a: float
    b: float
    c: float
    rms: float = 0.0

    def __call__(self, n: float) -> float:
        return self.a * n**self.b + self.c

    def to_json(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c, "rms_residual": self.rms}


def _model(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(x, b) + c


def _start(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Best (a, b, c) of a scan over b, each b solved in (a, c) by linear least squares."""
    best: Optional[tuple[float, float, float, float]] = None
    for b in -np.geomspace(1e-3, B_LIMIT, 400):
        design = np.stack([np.power(x, b), np.ones_like(x)], axis=1)
        (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
        if a <= 0 or c < 0:
            continue
        residual = float(np.sum((design @ np.array([a, c]) - y) ** 2))
        if best is None or residual < best[0]:
            best = (residual, float(a), float(b), float(c))
    if best is None:  # no decreasing law with a floor >= 0: start at a gentle slope, floor 0
        return float(max(y.max(), 1e-6)), -0.1, 0.0
    return best[1], best[2], best[3]


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> PowerLaw:
    """Fit L(N) = a·N^b + c to the points ``(n[i], loss[i])``; FitError when it cannot."""
    x_raw = np.asarray(n, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    if x_raw.shape != y.shape or x_raw.ndim != 1:
        raise FitError(f"need as many sizes as losses, got {x_raw.shape} and {y.shape}")
    if len(x_raw) < MIN_POINTS:
        raise FitError(f"a fit of a·N^b + c needs at least {MIN_POINTS} points (one per width), got {len(x_raw)}")
    if not (np.all(np.isfinite(x_raw)) and np.all(x_raw > 0)):
        raise FitError(f"sizes must be finite and > 0, got {list(x_raw)}")
    if not np.all(np.isfinite(y)):
        raise FitError(f"losses must be finite, got {list(y)}")
    if len(set(x_raw.tolist())) != len(x_raw):
        raise FitError(f"sizes must be distinct, got {list(x_raw)}")
    order = np.argsort(x_raw)
    if y[order][-1] >= y[order][0]:
        raise FitError(
            f"the loss does not fall with size (loss {y[order][0]:.4g} at the smallest, {y[order][-1]:.4g} at the "
            "largest): no a·N^b + c with b < 0 fits. Check the proxies: their learning rate may not suit the "
            "larger widths (under the standard parametrisation; μP transfers it), or they trained too few steps"
        )
    scale = float(x_raw.max())
    x = x_raw / scale
    p0 = _start(x, y)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # covariance is not used
            params, _ = curve_fit(
                _model,
                x,
                y,
                p0=p0,
                bounds=([0.0, -B_LIMIT, 0.0], [np.inf, 0.0, np.inf]),
                method="trf",
                maxfev=20000,
            )
    except (RuntimeError, ValueError) as err:
        raise FitError(f"curve_fit did not converge on sizes {list(x_raw)} and losses {list(y)}: {err}") from None
    a_scaled, b, c = (float(v) for v in params)
    if not all(math.isfinite(v) for v in (a_scaled, b, c)) or a_scaled <= 0 or b >= 0:
        raise FitError(f"the fit gave no decreasing power law (a={a_scaled:.4g}, b={b:.4g}, c={c:.4g})")
    a = a_scaled * scale ** (-b)
    rms = float(np.sqrt(np.mean((_model(x, a_scaled, b, c) - y) ** 2)))
    return PowerLaw(a, b, c, rms)


@dataclass(frozen=True)
class LeaveOneOut:
    """The prediction at ``target`` of each refit without point ``i`` (None where that refit failed,
    with its error), and the band (min, max) of the successful ones."""

    predictions: list[Optional[float]]
    errors: list[Optional[str]]

    @property
    def band(self) -> Optional[tuple[float, float]]:
        good = [p for p in self.predictions if p is not None]
        return (min(good), max(good)) if good else None


def leave_one_out(n: Sequence[float], loss: Sequence[float], target: float) -> LeaveOneOut:
    """Refit without each point and predict ``target``; FitError when there are fewer than
    ``MIN_POINTS + 1`` points (each refit must keep ``MIN_POINTS``)."""
    if len(n) < MIN_POINTS + 1:
        raise FitError(
            f"a leave-one-out band needs at least {MIN_POINTS + 1} points (each refit keeps {MIN_POINTS}), got {len(n)}"
        )
    predictions: list[Optional[float]] = []
    errors: list[Optional[str]] = []
    for i in range(len(n)):
        keep = [j for j in range(len(n)) if j != i]
        try:
            law = fit_power_law([n[j] for j in keep], [loss[j] for j in keep])
        except FitError as err:
            predictions.append(None)
            errors.append(str(err))
            continue
        predictions.append(law(target))
        errors.append(None)
    return LeaveOneOut(predictions, errors)
