"""The report chart: values written on the bars, missing paper scores marked n/a (not a 0% bar),
chance visible at 0%, n and --limit in the title, category bars, binomial error bars."""

from __future__ import annotations

import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from eval_iq.chart import build_chart, save_chart, wilson_interval
from eval_iq.registry import SUBTASKS
from eval_iq.report import summarize


def _summary(scores: dict[str, float], n: int = 20, limit: int | None = 20) -> dict:
    """A results document as ``flm iq`` builds it, from per-subtask accuracies."""
    specs = [SUBTASKS[name] for name in scores]
    lm_results = {
        "results": {SUBTASKS[k].task: {"acc,none": v, "acc_stderr,none": 0.1} for k, v in scores.items()},
        "n-samples": {SUBTASKS[k].task: {"effective": n} for k in scores},
    }
    return summarize(lm_results, specs, {"limit": limit}, {"name": "tiny"})


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_chart_annotates_values_marks_na_and_shows_n_and_limit(tmp_path):
    summary = _summary({"rte": 0.55, "csl": 0.0, "counting": 0.0, "head_tail": 0.25, "single_supporting_fact": 0.3})
    fig = build_chart(summary)
    top, bottom = fig.axes
    title = fig._suptitle.get_text()
    assert "n=20 per subtask" in title and "--limit 20" in title and "tiny" in title
    texts = _texts(top)
    # every subtask of this model is written on its bar, 0% included
    assert texts.count("0.0") >= 2 and "55.0" in texts and "25.0" in texts
    # GPT-3 has no CLUE-IQ score: CSL shows n/a instead of an (invisible) 0% bar
    assert texts.count("n/a") == 1
    # chance is drawn above the bars and the axis starts below 0, so a 0% chance mark is visible
    assert top.get_ylim()[0] < 0
    chance = [c for c in top.collections if c.get_label() == "chance"]
    assert chance and chance[0].get_zorder() > max(p.get_zorder() for p in top.patches)
    # binomial (Wilson) error bars on this model's subtask bars
    errbars = [c for c in top.containers if isinstance(c, ErrorbarContainer)]
    assert len(errbars) == 5
    # the category panel: the categories present (partial) and FLM IQ
    labels = [t.get_text() for t in bottom.get_xticklabels()]
    assert labels == [
        "Symbolic mapping (partial)",
        "Rule understanding (partial)",
        "Pattern mining (partial)",
        "Anti-interference (partial)",
        "FLM IQ (partial)",
    ]
    assert any(isinstance(c, BarContainer) for c in bottom.containers)
    cat_err = [c for c in bottom.containers if isinstance(c, ErrorbarContainer)]
    assert len(cat_err) == 5
    # rules scored 0%: its interval still has a width (Wilson-based, not "0 +- 0")
    rules_bar = cat_err[1].lines[2][0].get_segments()[0]
    assert rules_bar[0][1] == pytest.approx(0.0) and rules_bar[1][1] > 3
    out = save_chart(summary, tmp_path / "report.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_title_without_limit_and_mixed_n():
    summary = _summary({"counting": 0.5}, limit=None)
    summary["subtasks"]["counting"]["n"] = 148
    assert "n=148 per subtask, --limit none" in build_chart(summary)._suptitle.get_text()


def test_wilson_interval():
    lo, hi = wilson_interval(0.0, 20)
    assert lo == 0.0 and 0.1 < hi < 0.2  # a 0/20 score is not "exactly 0 +- 0"
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
