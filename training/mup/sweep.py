"""``flm mup sweep``: the learning-rate grid on proxies of several widths, and the best LR per width.

Every (width, lr, seed) is a proxy (``training.mup.proxies``; ``train.lr`` set, ``min_lr`` keeping
its ratio, ``train.seed`` the seed of the initialisation; the data order is the run's for all)
trained by ``training.mup.runner`` in a process of its own. A cell's loss is the mean over its
seeds of the proxy's final ``val_loss`` (or of its train loss averaged over the last ``window``
steps); a cell where any seed failed (diverged: a non-finite loss stops the run under
``train.on_nan: raise``) has no loss and cannot be best. The best LR of a width is the grid LR of
the lowest loss; the shift between widths is counted in grid steps. Under μP the best LR should
not move with width (hyperparameter transfer); under the standard parametrisation it falls as
the width grows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from training.config import RunConfig
from training.mup.proxies import parametrisation
from training.mup.runner import ProxyError, loss_at, make_proxy, train_proxies


@dataclass
class SweepResult:
    config: str
    parametrisation: str
    widths: list[int]
    lrs: list[float]
    seeds: list[int]
    metric: str
    window: int
    steps: int
    #: one entry per proxy: width, lr, seed, loss (None when failed), error, dir
    runs: list[dict[str, Any]] = field(default_factory=list)

    def cell(self, width: int, lr: float) -> Optional[float]:
        """Mean loss over the seeds of (width, lr); None when a seed failed or gave no finite loss."""
        losses = [r["loss"] for r in self.runs if r["width"] == width and r["lr"] == lr]
        if not losses or any(v is None or not math.isfinite(v) for v in losses):
            return None
        return sum(losses) / len(losses)

    def spread(self, width: int, lr: float) -> Optional[float]:
        """Half the range of the seeds' losses (None for one seed or a failed cell)."""
        losses = [r["loss"] for r in self.runs if r["width"] == width and r["lr"] == lr]
        if len(losses) < 2 or self.cell(width, lr) is None:
            return None
        return (max(losses) - min(losses)) / 2

    def best_lr(self, width: int) -> Optional[float]:
        cells = [(self.cell(width, lr), lr) for lr in self.lrs]
        good = [(loss, lr) for loss, lr in cells if loss is not None]
        return min(good)[1] if good else None

    def best(self) -> dict[int, Optional[float]]:
        return {w: self.best_lr(w) for w in self.widths}

    def shift(self, from_width: int, to_width: int) -> Optional[int]:
        """Grid steps from the best LR of ``from_width`` to that of ``to_width`` (negative: smaller)."""
        a, b = self.best_lr(from_width), self.best_lr(to_width)
        if a is None or b is None:
            return None
        return self.lrs.index(b) - self.lrs.index(a)

    def to_json(self) -> dict[str, Any]:
        best = self.best()
        return {
            "config": self.config,
            "parametrisation": self.parametrisation,
            "widths": self.widths,
            "lrs": self.lrs,
            "seeds": self.seeds,
            "metric": self.metric,
            "window": self.window,
            "steps": self.steps,
            "runs": self.runs,
            "loss": {str(w): {f"{lr:g}": self.cell(w, lr) for lr in self.lrs} for w in self.widths},
            "best_lr": {str(w): lr for w, lr in best.items()},
            "shift_grid_steps": self.shift(self.widths[0], self.widths[-1]) if len(self.widths) > 1 else 0,
        }

    def table(self) -> str:
        col = 16
        what = "val_loss" if self.metric == "val_loss" else f"train loss (last {self.window} steps)"
        lines = [
            f"LR sweep of {self.config}: {self.parametrisation}; {what} after {self.steps} steps, mean over seeds "
            f"{','.join(map(str, self.seeds))} (* best of the width, - failed)",
            f"{'lr':>10}" + "".join(f"{'width ' + str(w):>{col}}" for w in self.widths),
        ]
        best = self.best()
        for lr in self.lrs:
            cells = []
            for w in self.widths:
                loss, spread = self.cell(w, lr), self.spread(w, lr)
                text = "-" if loss is None else f"{loss:.4f}" + (f"±{spread:.3f}" if spread is not None else "")
                cells.append(f"{text + ('*' if best[w] == lr else ' '):>{col}}")
            lines.append(f"{lr:>10.3g}" + "".join(cells))
        lines.append(
            f"{'best lr':>10}"
            + "".join(f"{'-' if best[w] is None else f'{best[w]:.3g}':>{col - 1}} " for w in self.widths)
        )
        if len(self.widths) > 1:
            s = self.shift(self.widths[0], self.widths[-1])
            lines.append(
                f"best-LR shift from width {self.widths[0]} to {self.widths[-1]}: "
                + ("n/a (a width has no successful run)" if s is None else f"{s:+d} grid steps")
            )
        failed = [r for r in self.runs if r["error"]]
        if failed:
            lines.append(f"{len(failed)} failed run(s):")
            lines += [f"  {r['name']}: {r['error']}" for r in failed]
        return "\n".join(lines)


def run_sweep(
    base: RunConfig,
    *,
    widths: list[int],
    lrs: list[float],
    seeds: list[int],
    out_dir: Path,
    steps: Optional[int] = None,
    metric: str = "val_loss",
    window: int = 1,
    config_name: str = "",
) -> SweepResult:
    proxies = [make_proxy(base, w, out_dir, lr, seed, steps) for w in widths for lr in lrs for seed in seeds]
    result = SweepResult(
        config=config_name,
        parametrisation=parametrisation(base),
        widths=widths,
        lrs=lrs,
        seeds=seeds,
        metric=metric,
        window=window,
        steps=proxies[0].config.train.steps,
    )
    for outcome in train_proxies(proxies):
        p = outcome.proxy
        loss, error = None, outcome.error
        if error is None:
            try:
                loss = loss_at(outcome.records, metric=metric, window=window)
            except ValueError as err:
                error = f"{err} (metrics: {p.dir / 'metrics.jsonl'})"
        result.runs.append(
            {
                "name": p.name,
                "width": p.width,
                "lr": p.lr,
                "seed": p.seed,
                "loss": loss,
                "error": error,
                "dir": str(p.dir),
            }
        )
    if all(r["error"] for r in result.runs):
        first = result.runs[0]
        raise ProxyError(f"every proxy of the sweep failed; the first, {first['name']}: {first['error']}")
    return result


def write(result: SweepResult, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "sweep.json"
    path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return path
