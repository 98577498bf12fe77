"""``flm mup coord-check``: μP's coordinate check on the project's own trainer.

For each width the proxy of that width (``training.mup.proxies``: head dimension fixed, heads,
query groups and FFN following the run config's ratios; one process) is built by the real trainer
path (``training.engine.factory.make_trainer``, the megatron engine: the model, the optimizer with
its parameter groups and LR schedule) on the run's configured data, and trained ``steps + 1``
steps. Forward hooks (``training.engine.model.probes.ActivationProbe``) record the mean |x| of the
embedding output, the attention and MLP block outputs (averaged over layers; each layer kept in
the JSON) and the logits in each step's forward: the value at ``t`` is the forward after ``t``
updates (``t = 0``: at initialisation).

Under the standard parametrisation the hidden activations and logits grow with width once the
model trains (Adam's updates are O(lr) per coordinate, so a hidden matrix's update changes its
output by O(lr x width)); under μP they stay flat. The slope of log mean|x| against log width is
the summary (``slopes``): about 0 is flat, 0.5 or more is the standard-parametrisation blow-up.

Defaults for the check (before the command line's overrides, which win): a constant LR without
warmup (``train.warmup_steps=0``, ``train.lr_decay_style=constant``), so the steps watched are
taken at the run's peak LR.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from training.config import RunConfig
from training.data.build import run_sources
from training.engine.factory import make_trainer
from training.engine.model.probes import SITES, ActivationProbe
from training.engine.parallel import teardown
from training.errors import FLMError
from training.mup.proxies import parametrisation, proxy_config
from training.mup.runner import ProxyError

log = logging.getLogger(__name__)

#: overrides the check applies before the user's: the steps watched are at the run's peak LR
CHECK_DEFAULTS = ("train.warmup_steps=0", "train.lr_decay_style=constant")

SITE_TITLES = {
    "embedding": "embedding output",
    "attention": "attention output",
    "mlp": "MLP output",
    "logits": "logits",
}


def slope(widths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(width) (nan if a value is not positive)."""
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        return math.nan
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


@dataclass
class CoordCheckResult:
    """``values[site][i][t]``: mean |x| at ``widths[i]`` after ``t`` updates; ``layers[site][i][t]``
    the per-layer values."""

    config: str
    parametrisation: str
    widths: list[int]
    steps: int
    lr: float
    values: dict[str, list[list[float]]] = field(default_factory=dict)
    layers: dict[str, list[list[list[float]]]] = field(default_factory=dict)
    losses: list[list[float]] = field(default_factory=list)

    def slopes(self) -> dict[str, list[float]]:
        """Per site: the log-log slope against width after each number of updates ``t``."""
        return {
            site: [slope(self.widths, [per_width[t] for per_width in rows]) for t in range(self.steps + 1)]
            for site, rows in self.values.items()
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "parametrisation": self.parametrisation,
            "widths": self.widths,
            "steps": self.steps,
            "lr": self.lr,
            "note": "values[site][i][t]: mean |activation| at widths[i] in the forward after t updates",
            "values": self.values,
            "layers": self.layers,
            "losses": self.losses,
            "slopes": self.slopes(),
        }


def _one_width(cfg: RunConfig, steps: int) -> tuple[list[dict[str, dict[str, Any]]], list[float]]:
    """Train ``steps + 1`` steps of ``cfg`` in this process; the probe's values per step."""
    train_src, valid_src = run_sources(cfg)
    trainer = make_trainer(cfg, train_source=train_src, valid_source=valid_src)
    try:
        per_step, losses = [], []
        with ActivationProbe(trainer.mask_chunks, vocab_size=cfg.model.vocab_size) as probe:
            for _ in range(steps + 1):
                result = trainer.step()
                per_step.append(probe.take())
                losses.append(result.loss)
        return per_step, losses
    finally:
        del trainer
        teardown()
        gc.collect()


def run_coord_check(
    base: RunConfig, widths: list[int], *, steps: int, out_dir: Path, config_name: str = ""
) -> CoordCheckResult:
    """The check over ``widths`` (see the module docstring)."""
    result = CoordCheckResult(
        config=config_name, parametrisation=parametrisation(base), widths=widths, steps=steps, lr=base.train.lr
    )
    result.values = {site: [] for site in SITES}
    result.layers = {site: [] for site in SITES}
    for width in widths:
        cfg = proxy_config(base, width, output_dir=str(out_dir / f"w{width}"), steps=steps + 1, engine="megatron")
        log.info(
            "coord check: width %d (%d heads, ffn %d)", width, cfg.model.num_attention_heads, cfg.model.ffn_hidden_size
        )
        try:
            per_step, losses = _one_width(cfg, steps)
        except FLMError as err:
            raise ProxyError(f"coord check: the proxy of width {width} failed: {err}") from err
        except Exception:
            log.error("coord check: the proxy of width %d failed (traceback below)", width)
            raise
        for site in SITES:
            result.values[site].append([s[site]["mean"] for s in per_step])
            result.layers[site].append([s[site]["layers"] for s in per_step])
        result.losses.append(losses)
    return result


def plot(result: CoordCheckResult, path: Path) -> None:
    """One log-log panel per site: mean |x| against width, a line per step."""
    import matplotlib  # startup time and an optional display backend: loaded only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (with the above)

    fig, axes = plt.subplots(1, len(SITES), figsize=(4.2 * len(SITES), 3.8), squeeze=False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, result.steps + 1))
    slopes = result.slopes()
    for ax, site in zip(axes[0], SITES):
        for t in range(result.steps + 1):
            ys = [row[t] for row in result.values[site]]
            ax.plot(result.widths, ys, marker="o", color=colors[t], label=f"t={t}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        values = [v for row in result.values[site] for v in row if v > 0]
        if values and max(values) / min(values) < 10:  # at least a decade shown: flat must look flat
            centre = math.sqrt(max(values) * min(values))
            ax.set_ylim(centre / math.sqrt(10), centre * math.sqrt(10))
        ax.set_title(f"{SITE_TITLES[site]} (slope {slopes[site][-1]:+.2f} at t={result.steps})", fontsize=10)
        ax.set_xlabel("width (hidden_size)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"coordinate check: {result.config}, {result.parametrisation}, lr {result.lr:g}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: CoordCheckResult, out_dir: Path, *, draw: bool = True) -> tuple[Path, Optional[Path]]:
    """``coord_check.json`` (and ``coord_check.png``) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "coord_check.json"
    json_path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    png = None
    if draw:
        png = out_dir / "coord_check.png"
        plot(result, png)
    return json_path, png


def summary(result: CoordCheckResult) -> str:
    """The slopes as a table: a row per site, a column per step."""
    slopes = result.slopes()
    head = f"{'site':<18}" + "".join(f"{'t=' + str(t):>9}" for t in range(result.steps + 1))
    rows = [f"{SITE_TITLES[site]:<18}" + "".join(f"{v:>+9.2f}" for v in slopes[site]) for site in SITES]
    return "\n".join(
        [
            f"coordinate check of {result.config}: {result.parametrisation}, lr {result.lr:g}, widths "
            f"{','.join(map(str, result.widths))}",
            "log-log slope of mean |activation| against width, after t updates (about 0: flat; >= 0.5: grows "
            "with width)",
            head,
            *rows,
        ]
    )
