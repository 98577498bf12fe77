"""The ``report.png`` of ``flm iq``: subtask and category scores beside the paper's, readable alone.

Two panels, scores in percent:

* **subtasks**: one group of bars per subtask (this model, GPT-3 175B, GLM-130B, FLM-101B). This
  model's bar has a 95% binomial (Wilson) interval from its ``n`` evaluated instances and its
  value written above it; a missing paper score is written ``n/a`` at its place (so it never
  looks like a 0% bar); the chance level is a black segment across the group, drawn above the
  bars and visible at 0% (the axis starts below 0). Truncated subtasks are flagged in their label.
* **categories**: the four category scores and FLM IQ the same way (interval from the subtasks'
  intervals, as for an unweighted mean; paper values are means of the paper's subtask scores, n/a
  where the paper lacks one); partial categories are labelled "(partial)".

The title names the model and says how many instances were evaluated per subtask and the
``--limit`` in force.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from eval_iq.reference import PAPER_MODELS, paper_score
from eval_iq.registry import CATEGORIES

Z95 = 1.959964
THIS = "This model"


def wilson_interval(p: float, n: int | None, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``p`` observed on ``n`` trials."""
    if not n:
        return (float("nan"), float("nan"))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _category_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for cat, c in summary["categories"].items():
        if not c["subtasks"]:
            continue
        subs = [summary["subtasks"][n] for n in c["subtasks"]]
        # stderr of an unweighted mean of independent subtask means: sqrt(sum se^2) / k, each se
        # taken from the subtask's Wilson interval (never 0 at a score of 0% or 100%)
        ses = [(hi - lo) / (2 * Z95) for lo, hi in (wilson_interval(s["acc"], s.get("n")) for s in subs)]
        se = math.sqrt(sum(x * x for x in ses)) / len(ses)
        paper = {}
        for m in PAPER_MODELS:
            vals = [paper_score(m, n) for n in c["subtasks"]]
            paper[m] = None if any(v is None for v in vals) else sum(vals) / len(vals)  # type: ignore[arg-type]
        rows.append(
            {
                "label": CATEGORIES[cat] + ("" if c["complete"] else " (partial)"),
                "acc": c["acc"],
                "se": se,
                "chance": sum(s["chance"] for s in subs) / len(subs),
                "paper": paper,
            }
        )
    o = summary["flm_iq"]
    if o["acc"] is not None:
        cat_rows = list(rows)
        se = math.sqrt(sum(r["se"] ** 2 for r in cat_rows)) / len(cat_rows)
        paper = {
            m: (
                None
                if any(r["paper"][m] is None for r in cat_rows)
                else sum(r["paper"][m] for r in cat_rows) / len(cat_rows)
            )
            for m in PAPER_MODELS
        }
        rows.append(
            {
                "label": "FLM IQ" + ("" if o["complete"] else " (partial)"),
                "acc": o["acc"],
                "se": se,
                "chance": sum(r["chance"] for r in cat_rows) / len(cat_rows),
                "paper": paper,
            }
        )
    return rows


def _subtask_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, s in summary["subtasks"].items():
        lo, hi = wilson_interval(s["acc"], s.get("n"))
        label = s["title"] + (f" [{s['truncated']} truncated]" if s.get("truncated") else "")
        rows.append(
            {
                "label": label,
                "acc": s["acc"],
                "lo": lo,
                "hi": hi,
                "chance": s["chance"],
                "paper": {m: paper_score(m, name) for m in PAPER_MODELS},
            }
        )
    return rows


def _panel(ax: Any, rows: list[dict[str, Any]], ylabel: str) -> None:
    series = [THIS, *PAPER_MODELS]
    width = 0.8 / len(series)
    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
    for k, label in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(rows))]
        legend = label  # the first bar of a series carries its legend entry
        for x, row in zip(xs, rows):
            if label == THIS:
                v = 100 * row["acc"]
                if "lo" in row:
                    err = [[v - 100 * row["lo"]], [100 * row["hi"] - v]]
                else:
                    half = 100 * Z95 * row["se"]
                    err = [[min(v, half)], [min(100 - v, half)]]
                ax.bar(x, v, width, color=colours[k], label=legend, yerr=err, capsize=2, error_kw={"elinewidth": 0.8})
                legend = None
                top = v + err[1][0] if not math.isnan(err[1][0]) else v
                ax.text(x, top + 1.5, f"{v:.1f}", ha="center", va="bottom", fontsize=6, rotation=90)
            else:
                v = row["paper"][label]
                if v is None:
                    ax.text(x, 1, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="dimgray")
                else:
                    ax.bar(x, v, width, color=colours[k], alpha=0.75, label=legend)
                    legend = None
    for i, row in enumerate(rows):
        ax.hlines(
            100 * row["chance"],
            i - 0.45,
            i + 0.45,
            colors="black",
            linewidth=2,
            zorder=5,
            label="chance" if i == 0 else None,
        )
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-4, 112)
    ax.axhline(0, color="lightgray", linewidth=0.6, zorder=0)
    ax.legend(fontsize=7, ncol=5, loc="upper right")


def chart_title(summary: dict[str, Any]) -> str:
    ns = [s["n"] for s in summary["subtasks"].values() if s.get("n") is not None]
    n = "n=?" if not ns else (f"n={ns[0]}" if min(ns) == max(ns) else f"n={min(ns)}-{max(ns)}")
    limit = summary.get("settings", {}).get("limit")
    return (
        f"FLM IQ: {summary['model'].get('name', 'model')} ({n} per subtask, "
        f"--limit {limit if limit is not None else 'none'}; bars: 95% Wilson interval)"
    )


def build_chart(summary: dict[str, Any]):
    """The matplotlib ``Figure`` of the report (see the module doc)."""
    import matplotlib  # heavy: matplotlib only to draw the chart

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # heavy: matplotlib only to draw the chart

    subtasks, categories = _subtask_rows(summary), _category_rows(summary)
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(max(9.0, 0.95 * len(subtasks) + 2), 9),
        gridspec_kw={"height_ratios": [3, 2]},
    )
    _panel(top, subtasks, "accuracy (%)")
    if categories:
        _panel(bottom, categories, "category score (%)")
    else:
        bottom.set_axis_off()
    fig.suptitle(chart_title(summary), fontsize=10)
    fig.tight_layout()
    return fig


def save_chart(summary: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`build_chart` as a PNG to ``path``."""
    import matplotlib.pyplot as plt  # heavy: matplotlib only to draw the chart

    fig = build_chart(summary)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
