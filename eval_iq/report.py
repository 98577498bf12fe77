"""Turn lm-eval results into the ``flm iq`` outputs: results JSON, per-sample logs, table, chart.

Aggregation follows the spec: a category's score is the unweighted mean of its subtasks' ``acc``;
``flm_iq`` is the unweighted mean of the four category scores. A category (or ``flm_iq``) computed
from fewer subtasks than the spec defines is marked ``complete: false`` and flagged in the table.
lm-eval's group rows compute the same numbers (see :mod:`eval_iq.lm_groups`).
Extra subtasks outside the benchmark (BUSTM) are reported but not aggregated.
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path
from typing import Any

from eval_iq.chart import save_chart
from eval_iq.reference import PAPER_MODELS, paper_score
from eval_iq.registry import BENCHMARK_SUBTASKS, CATEGORIES, HARNESS_VERSION, SUBTASKS, SubtaskSpec


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _float(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def summarize(
    lm_results: dict[str, Any],
    specs: list[SubtaskSpec],
    settings: dict[str, Any],
    model: dict[str, Any],
    digests: dict[str, dict[str, Any]] | None = None,
    skipped: dict[str, str] | None = None,
    truncation: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """Build the results document (plain JSON data). Scores are fractions in [0, 1].

    ``truncation`` (:func:`eval_iq.truncation.truncation_report`) gives each subtask's
    ``truncated`` count (documents whose prompt the model saw left-truncated; ``None`` = not
    measured) and ``truncation`` details."""
    subtasks: dict[str, Any] = {}
    for spec in specs:
        res = lm_results["results"].get(spec.task)
        if res is None or "acc,none" not in res:
            raise KeyError(f"lm-eval results have no 'acc,none' for {spec.task}")
        n = lm_results.get("n-samples", {}).get(spec.task, {}).get("effective")
        subtasks[spec.name] = {
            "task": spec.task,
            "title": spec.title,
            "category": spec.category,
            "acc": float(res["acc,none"]),
            "acc_stderr": _float(res.get("acc_stderr,none")),
            "n": n,
            "chance": spec.chance,
            "chance_note": spec.chance_note,
            "in_benchmark": spec.in_benchmark,
            "truncated": (truncation or {}).get(spec.name, {}).get("truncated"),
            "truncation": (truncation or {}).get(spec.name),
            **(digests or {}).get(spec.name, {}),
        }
    categories: dict[str, Any] = {}
    for cat in CATEGORIES:
        members = [n for n in BENCHMARK_SUBTASKS if SUBTASKS[n].category == cat]
        present = [n for n in members if n in subtasks]
        categories[cat] = {
            "acc": _mean([subtasks[n]["acc"] for n in present]),
            "subtasks": present,
            "complete": len(present) == len(members),
        }
    cat_scores = [c["acc"] for c in categories.values() if c["acc"] is not None]
    overall = {
        "acc": _mean(cat_scores) if len(cat_scores) == len(CATEGORIES) else None,
        "complete": all(c["complete"] for c in categories.values()),
    }
    paper = {m: {n: paper_score(m, n) for n in subtasks if paper_score(m, n) is not None} for m in PAPER_MODELS}
    return {
        "benchmark": "flm_iq",
        "harness_version": HARNESS_VERSION,
        "model": model,
        "settings": settings,
        "subtasks": subtasks,
        "categories": categories,
        "flm_iq": overall,
        "skipped": skipped or {},
        "paper_scores_percent": paper,
        "lm_eval_version": _lm_eval_version(),
    }


def _lm_eval_version() -> str:
    try:
        return version("lm_eval")
    except Exception:  # pragma: no cover - metadata missing only in broken installs
        return "unknown"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


#: the instances are generated here from the paper's descriptions, not the paper's own (unpublished) ones
RECONSTRUCTION_NOTE = (
    "These instances are this project's reconstruction of the FLM-101B IQ tests from the paper's "
    "descriptions (docs/iq-benchmark.md), not the paper's own, so the paper columns are a reference, "
    "not a like-for-like comparison."
)


def _paper_pct(model: str, subtask: str) -> str:
    v = paper_score(model, subtask)
    return "–" if v is None else f"{v:.2f}"


def _paper_category(model: str, members: list[str]) -> str:
    vals = [paper_score(model, n) for n in members]
    return "–" if not members or any(v is None for v in vals) else f"{sum(vals) / len(vals):.2f}"  # type: ignore[arg-type]


def markdown_table(summary: dict[str, Any]) -> str:
    """Markdown report: one row per subtask, then categories and FLM IQ. Percent."""
    models = list(PAPER_MODELS)
    head = ["Subtask", "Category", "n", "Truncated", "This model", "Chance", *models]
    lines = [
        f"# FLM IQ benchmark: {summary['model'].get('name', 'model')}",
        "",
        f"Settings: {json.dumps(summary['settings'], sort_keys=True)}",
        "",
        RECONSTRUCTION_NOTE,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, s in summary["subtasks"].items():
        trunc = "?" if s.get("truncated") is None else str(s["truncated"])
        cells = [s["title"], CATEGORIES[s["category"]], str(s["n"]), trunc, _pct(s["acc"]), _pct(s["chance"])]
        lines.append("| " + " | ".join(cells + [_paper_pct(m, name) for m in models]) + " |")
    for cat, c in summary["categories"].items():
        if not c["subtasks"]:
            continue
        mark = "" if c["complete"] else " (partial)"
        chance = _mean([SUBTASKS[n].chance for n in c["subtasks"]])
        cells = [f"**{CATEGORIES[cat]}{mark}**", "", "", "", _pct(c["acc"]), _pct(chance)]
        lines.append("| " + " | ".join(cells + [_paper_category(m, c["subtasks"]) for m in models]) + " |")
    o = summary["flm_iq"]
    if o["acc"] is not None:
        mark = "" if o["complete"] else " (partial)"
        lines.append(f"| **FLM IQ{mark}** | mean of categories | | | {_pct(o['acc'])} | | | | |")
    lines.append("")
    lines.append(
        "Scores are accuracy in percent; paper rows: FLM-101B paper (arXiv 2309.03852). "
        "Chance: expected accuracy of a uniform random guess (see results JSON). "
        "Truncated: instances whose prompt exceeded the model's context and lost its beginning "
        "(? = not measured)."
    )
    cut = {n: s for n, s in summary["subtasks"].items() if s.get("truncated")}
    if cut:
        lines.append("")
        lines.append(
            "**Warning: truncated prompts.** "
            + "; ".join(
                f"{s['title']}: {s['truncated']} of {s['truncation']['n']} (longest "
                f"{s['truncation']['max_tokens']} tokens, {s['truncation']['limit']} kept)"
                for s in cut.values()
            )
            + ". These scores are not comparable with untruncated runs."
        )
    if summary["skipped"]:
        lines.append("")
        lines.append("Skipped: " + "; ".join(summary["skipped"].values()))
    return "\n".join(lines) + "\n"


def bar_chart(summary: dict[str, Any], path: str | Path) -> Path:
    """PNG chart of the results (:mod:`eval_iq.chart`)."""

    return save_chart(summary, path)


def _sample_record(sample: dict[str, Any]) -> dict[str, Any]:
    doc = sample.get("doc", {})
    return {
        "doc_id": sample.get("doc_id"),
        "index": doc.get("index"),
        "prompt": doc.get("prompt"),
        "choices": doc.get("choices"),
        "target": sample.get("target"),
        "response": sample.get("filtered_resps"),
        "acc": sample.get("acc"),
    }


def write_outputs(summary: dict[str, Any], lm_results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``lm_eval_results.json``, ``samples/<task>.jsonl``,
    ``report.md`` and ``report.png`` into ``out_dir``; return their paths by kind."""
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    paths = {
        "results": out / "results.json",
        "lm_eval": out / "lm_eval_results.json",
        "table": out / "report.md",
        "chart": out / "report.png",
    }
    paths["results"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    raw = {k: v for k, v in lm_results.items() if k != "samples"}
    paths["lm_eval"].write_text(json.dumps(raw, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    for task, samples in lm_results.get("samples", {}).items():
        lines = [json.dumps(_sample_record(s), ensure_ascii=False, default=str) for s in samples]
        (out / "samples" / f"{task}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[f"samples:{task}"] = out / "samples" / f"{task}.jsonl"
    paths["table"].write_text(markdown_table(summary), encoding="utf-8")
    bar_chart(summary, paths["chart"])
    return paths
