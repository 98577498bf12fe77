"""``flm predict``: predict a wider model's loss from proxies at the same step (μScaling).

The proxies of ``widths`` (``training.mup.proxies``: the run's config at each width, with the
configured LR, at each of ``seeds``) are trained by ``training.mup.runner`` (finished ones under
``--out`` are reused), each one's loss at step ``step`` is read (its ``val_loss`` there, or the
train loss averaged over a window) and averaged over the seeds, and L(N) = a·N^b + c is fitted to (N, loss) with N the proxy's non-embedding parameter
count (``training.mup.proxies.non_embedding_params``: why) by ``training.mup.fit``. The fit gives
the loss of ``target_width`` (default: the run's own hidden size) at the same step; the
leave-one-out refits give its band. ``measure`` also trains the target (at every seed) and reports
the error of the prediction against its measured loss (the mean over the seeds).

Under μP the proxies' hyperparameters are those of the target (they transfer), which is what makes
the losses of one step comparable across widths; under the standard parametrisation the
prediction assumes the configured LR suits every width.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from training.config import RunConfig
from training.errors import UsageError
from training.mup.fit import MIN_POINTS, FitError, PowerLaw, fit_power_law, leave_one_out
from training.mup.proxies import non_embedding_params, parametrisation
from training.mup.runner import ProxyError, loss_at, make_proxy, train_proxies

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    config: str
    parametrisation: str
    step: int
    metric: str
    window: int
    widths: list[int]
    params: list[int]
    losses: list[float]
    target_width: int
    target_params: int
    fit: PowerLaw
    predicted: float
    loo_predictions: list[Optional[float]] = field(default_factory=list)
    loo_errors: list[Optional[str]] = field(default_factory=list)
    band: Optional[tuple[float, float]] = None
    measured: Optional[float] = None
    #: the seeds averaged; per width (and for the measured target) the loss of each seed
    seeds: list[int] = field(default_factory=list)
    seed_losses: list[list[float]] = field(default_factory=list)
    measured_seeds: list[float] = field(default_factory=list)

    @property
    def error_pct(self) -> Optional[float]:
        """(predicted - measured) / measured in %, when the target was trained."""
        return None if self.measured is None else 100.0 * (self.predicted - self.measured) / self.measured

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "parametrisation": self.parametrisation,
            "step": self.step,
            "metric": self.metric,
            "window": self.window,
            "size": "non-embedding parameters (training.mup.proxies.non_embedding_params)",
            "seeds": self.seeds,
            "proxies": [
                {"width": w, "params": n, "loss": loss, "seed_losses": per_seed}
                for w, n, loss, per_seed in zip(self.widths, self.params, self.losses, self.seed_losses)
            ],
            "fit": self.fit.to_json(),
            "target": {"width": self.target_width, "params": self.target_params},
            "predicted": self.predicted,
            "leave_one_out": [
                {"left_out_width": w, "predicted": p, "error": e}
                for w, p, e in zip(self.widths, self.loo_predictions, self.loo_errors)
            ],
            "band": None if self.band is None else list(self.band),
            "measured": self.measured,
            "measured_seeds": self.measured_seeds,
            "error_pct": self.error_pct,
        }

    def report(self) -> str:
        what = (
            "val_loss"
            if self.metric == "val_loss"
            else f"train loss (mean of steps {self.step - self.window + 1}..{self.step})"
        )
        seeds = f"mean of seeds {','.join(map(str, self.seeds))}" if len(self.seeds) > 1 else f"seed {self.seeds[0]}"
        lines = [
            f"loss prediction of {self.config} at step {self.step}: {self.parametrisation}; {what}; {seeds}",
            f"{'width':>8}{'params (non-emb.)':>20}{'loss':>10}{'seed spread':>13}",
            *(
                f"{w:>8}{n:>20,}{loss:>10.4f}{_half_range(per_seed):>13.2g}"
                for w, n, loss, per_seed in zip(self.widths, self.params, self.losses, self.seed_losses)
            ),
            f"fit L(N) = a·N^b + c: a = {self.fit.a:.4g}, b = {self.fit.b:.4f}, c = {self.fit.c:.4f} "
            f"(rms residual {self.fit.rms:.2g})",
            f"width {self.target_width} ({self.target_params:,} non-embedding params): predicted loss {self.predicted:.4f}"
            + (
                f", leave-one-out band {self.band[0]:.4f} .. {self.band[1]:.4f}"
                if self.band is not None
                else f" (no leave-one-out band: it needs at least {MIN_POINTS + 1} widths)"
            ),
        ]
        for w, e in zip(self.widths, self.loo_errors):
            if e is not None:
                lines.append(f"  the refit without width {w} failed: {e}")
        if self.measured is not None:
            spread = f" ± {_half_range(self.measured_seeds):.2g} over the seeds" if len(self.measured_seeds) > 1 else ""
            lines.append(
                f"measured loss {self.measured:.4f}{spread}: prediction error {self.error_pct:+.2f}% of the measured loss"
            )
        return "\n".join(lines)


def _half_range(values: list[float]) -> float:
    return (max(values) - min(values)) / 2


def _mean_loss(outcomes: list, step: int, metric: str, window: int) -> tuple[float, list[float]]:
    """(mean over the outcomes, each one's loss) at ``step``."""
    losses = [_loss(o, step, metric, window) for o in outcomes]
    return sum(losses) / len(losses), losses


def _loss(outcome, step: int, metric: str, window: int) -> float:
    p = outcome.proxy
    if not outcome.ok:
        raise ProxyError(f"{p.describe()} failed: {outcome.error}")
    try:
        return loss_at(outcome.records, step=step, metric=metric, window=window)
    except ValueError as err:
        raise ProxyError(f"{p.describe()}: {err} (metrics: {p.dir / 'metrics.jsonl'})") from None


def run_predict(
    base: RunConfig,
    *,
    widths: list[int],
    step: int,
    out_dir: Path,
    target_width: Optional[int] = None,
    seeds: Optional[list[int]] = None,
    steps: Optional[int] = None,
    metric: str = "val_loss",
    window: int = 1,
    measure: bool = False,
    config_name: str = "",
) -> Prediction:
    if len(widths) < MIN_POINTS:
        raise UsageError(
            f"--widths: a fit of a·N^b + c needs at least {MIN_POINTS} proxy widths, got {len(widths)} "
            f"({','.join(map(str, widths))}); {MIN_POINTS + 1} or more also give a leave-one-out band"
        )
    target = base.model.hidden_size if target_width is None else target_width
    if target in widths:
        raise UsageError(f"--target-width {target} is one of the proxies' --widths; predict a width outside them")
    lr = base.train.lr
    seeds = [base.train.seed] if not seeds else seeds
    proxies = [make_proxy(base, w, out_dir, lr, seed, steps) for w in widths for seed in seeds]
    targets = [make_proxy(base, target, out_dir, lr, seed, steps) for seed in seeds]
    run_steps = proxies[0].config.train.steps
    if not 0 < step <= run_steps:
        raise UsageError(
            f"--step {step} is beyond the end of the proxies' runs (train.steps = {run_steps}); choose a step in "
            f"1..{run_steps} or train longer with --steps"
        )
    if window < 1 or window > step:
        raise UsageError(f"--window {window} must be in 1..{step} (the --step)")
    outcomes = train_proxies(proxies)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise ProxyError(
            f"{len(failed)} of {len(outcomes)} proxies failed; "
            + "; ".join(f"{o.proxy.describe()}: {o.error}" for o in failed)
        )
    k = len(seeds)
    per_width = [_mean_loss(outcomes[i * k : (i + 1) * k], step, metric, window) for i in range(len(widths))]
    losses = [mean for mean, _ in per_width]
    params = [non_embedding_params(proxies[i * k].config.model) for i in range(len(widths))]
    target_params = non_embedding_params(targets[0].config.model)
    try:
        law = fit_power_law(params, losses)
    except FitError as err:
        raise FitError(f"widths {','.join(map(str, widths))} at step {step}: {err}") from None
    result = Prediction(
        config=config_name,
        parametrisation=parametrisation(base),
        step=step,
        metric=metric,
        window=window,
        widths=widths,
        params=params,
        losses=losses,
        target_width=target,
        target_params=target_params,
        fit=law,
        predicted=law(target_params),
        seeds=seeds,
        seed_losses=[per_seed for _, per_seed in per_width],
    )
    if len(widths) > MIN_POINTS:
        loo = leave_one_out(params, losses, target_params)
        result.loo_predictions, result.loo_errors, result.band = loo.predictions, loo.errors, loo.band
    if measure:
        result.measured, result.measured_seeds = _mean_loss(train_proxies(targets), step, metric, window)
    return result


def write(result: Prediction, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "predict.json"
    path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return path
