"""MSG's equivalent-step entry of a grown stage, estimated from the run's own loss curve.

Under ``lr_schedule: {kind: equivalent_step}`` a grown stage enters the run-level LR schedule at
``D_eq``: the tokens a from-scratch run of the grown shape would need to reach the loss the run has
at the transition (growth preserves the function, so that is the previous stage's last validation
loss ``L_now``). Unless ``stages[i].growth.equivalent_tokens`` gives it, it is estimated here with
the separable form of Kaplan et al. (2020), ``L(N, D) = (N_c/N)^α_N + (D_c/D)^β``:

1. fit ``L(D) = c + k·D^-β`` (scipy ``curve_fit``) to the previous stage's validation losses after
   its warmup, ``D`` being the stage's position in the run-level schedule in tokens;
2. the grown shape's floor is ``c_T = c·(N_prev/N_T)^α_N`` (N: non-embedding parameters,
   ``α_N = lr_schedule.size_exponent``);
3. ``D_eq`` solves ``c_T + k·D^-β = L_now``, clipped to ``[0, D_prev]`` (a larger model never needs
   more tokens for the same loss).

The estimate is written to ``<stage dir>/equivalent_step.json`` the first time and read back from
there on resume, so a resumed stage follows the schedule it started with.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from training.config import ModelConfig, RunConfig
from training.errors import FLMError
from training.model_size import non_embedding_params

ESTIMATE_FILE = "equivalent_step.json"
#: the fit has three parameters; a fourth point is the least that leaves a residual
MIN_POINTS = 4


class EquivalentStepError(FLMError):
    """The equivalent-step entry cannot be estimated (too few points, a failed fit)."""


@dataclass
class EquivalentStepEstimate:
    stage: int
    #: validation points (schedule tokens, loss) of the previous stage used by the fit
    points: list[tuple[int, float]]
    c: float
    k: float
    beta: float
    floor_grown: float
    loss_now: float
    tokens_prev: int
    equivalent_tokens: int


def fit_power_law(tokens: list[float], losses: list[float]) -> tuple[float, float, float]:
    """Least-squares ``L(D) = c + k·D^-β`` with ``c >= 0``, ``k > 0``, ``β > 0``; returns (c, k, β).
    Fitted in units of the first point's tokens so the parameters stay O(1)."""
    import numpy as np  # with scipy: loaded only when an estimate is made
    from scipy.optimize import curve_fit

    d0 = tokens[0]
    x = np.asarray(tokens, dtype=np.float64) / d0
    y = np.asarray(losses, dtype=np.float64)

    def law(x, c, k, beta):
        return c + k * np.power(x, -beta)

    guess = (0.8 * y.min(), max(y[0] - 0.8 * y.min(), 1e-3), 0.5)
    (c, k, beta), _ = curve_fit(law, x, y, p0=guess, bounds=([0.0, 1e-12, 1e-3], [np.inf, np.inf, 5.0]), maxfev=20000)
    return float(c), float(k * d0**beta), float(beta)


def solve_tokens(c: float, k: float, beta: float, loss: float) -> float:
    """The ``D`` with ``c + k·D^-β = loss``; ``inf`` when ``loss <= c`` (never reached)."""
    return math.inf if loss <= c else (k / (loss - c)) ** (1.0 / beta)


def _validation_points(cfg: RunConfig) -> list[tuple[int, float]]:
    metrics = Path(cfg.output_dir) / "metrics.jsonl"
    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
    points = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if record.get("val_loss") is not None and record["step"] > cfg.train.warmup_steps:
                points.append(
                    ((cfg.train.schedule_offset_steps + record["step"]) * tokens_per_step, record["val_loss"])
                )
    return points


def estimate(run: RunConfig, index: int, prev: RunConfig, grown_model: ModelConfig) -> EquivalentStepEstimate:
    """Estimate stage ``index``'s entry from ``prev`` (stage ``index - 1``'s trained config, entry
    included) and the model the stage trains."""
    points = _validation_points(prev)
    where = f"stages[{index}].growth.equivalent_tokens"
    if len(points) < MIN_POINTS:
        raise EquivalentStepError(
            f"the equivalent-step entry of stage {index} is fitted to stage {index - 1}'s validation losses after "
            f"its warmup, and {prev.output_dir}/metrics.jsonl has {len(points)} (needs {MIN_POINTS}); lower "
            f"train.eval_interval or give {where}"
        )
    try:
        c, k, beta = fit_power_law([p[0] for p in points], [p[1] for p in points])
    except (RuntimeError, ValueError) as err:
        raise EquivalentStepError(
            f"fitting L(D) = c + k*D^-beta to stage {index - 1}'s validation losses failed ({err}); give {where}"
        ) from None
    ratio = non_embedding_params(prev.model) / non_embedding_params(grown_model)
    floor = c * ratio**run.lr_schedule.size_exponent
    loss_now = points[-1][1]
    tokens_prev = points[-1][0]
    tokens = min(float(tokens_prev), solve_tokens(floor, k, beta, loss_now))
    return EquivalentStepEstimate(index, points, c, k, beta, floor, loss_now, tokens_prev, max(0, int(tokens)))


def entry_tokens(
    run: RunConfig, index: int, prev: RunConfig, grown_model: ModelConfig, stage_dir: Path
) -> Optional[int]:
    """Stage ``index``'s estimated entry in tokens, or None where none is estimated (another
    schedule, a first stage, or ``equivalent_tokens`` given). Written once to ``stage_dir``."""
    growth = run.stages[index].growth
    if run.lr_schedule.kind != "equivalent_step" or growth is None or growth.equivalent_tokens is not None:
        return None
    path = stage_dir / ESTIMATE_FILE
    if path.is_file():
        return int(json.loads(path.read_text())["equivalent_tokens"])
    result = estimate(run, index, prev, grown_model)
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result), indent=2))
    tmp.replace(path)
    return result.equivalent_tokens
