"""The IQ benchmark on a growth run's checkpoints: the compact per-checkpoint record and the per-stage table.

A staged run's ``iq_eval`` section (``training.config.IQEvalConfig``: ``tasks``, ``limit``,
``data_dir``) says what to evaluate; ``flm eval`` (``eval_iq.watch``) evaluates each checkpoint in
a process of its own (``flm iq --model flm``, the project backend) and keeps :func:`compact` of
the results in the stage's ``eval.jsonl``; ``flm dryrun``'s ``stages.md`` shows each stage's
final record side by side with :func:`stages_markdown`, so each growth step's effect on the scores
is visible. :func:`evaluate_checkpoint` is the same evaluation in-process (tests, notebooks).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval_iq.errors import UnknownSubtaskError
from eval_iq.registry import CATEGORIES, SUBTASKS, resolve_subtasks
from training.config_base import ConfigError

logger = logging.getLogger(__name__)


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    tasks: str | Sequence[str],
    limit: int | None = None,
    data_dir: str | Path | None = None,
    backend: Any = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Run IQ ``tasks`` (any ``flm iq --subtasks`` selection) on a project checkpoint.

    ``backend`` overrides the checkpoint's :class:`~eval_iq.adapter.CausalLMBackend` (tests).
    Subtasks whose data is missing are skipped (as ``--skip-unavailable``). Writes the outputs of
    ``flm iq`` to ``out_dir`` and returns :func:`compact` of the results. Raises
    :class:`~eval_iq.errors.IQError` for bad selections, missing checkpoint loader or data.
    """
    from eval_iq.adapter import (  # heavy (lm-eval): loaded when a stage is evaluated, not in every trainer process
        BackendLM,
        load_project_backend,
    )
    from eval_iq.offline import enable_offline_mode
    from eval_iq.registry import resolve_subtasks
    from eval_iq.report import write_outputs
    from eval_iq.runner import RunSettings, benchmark, make_plan
    from eval_iq.symbolic_data import resolve_data_dir

    enable_offline_mode()
    specs = resolve_subtasks(tasks)
    resolved = resolve_data_dir(data_dir)
    plan = make_plan(specs, resolved, skip_unavailable=True)
    settings = RunSettings(limit=limit, data_dir=resolved)
    lm = BackendLM(backend if backend is not None else load_project_backend(checkpoint_dir), batch_size=batch_size)
    name = "/".join(Path(checkpoint_dir).resolve().parts[-3:])  # <stage dir>/checkpoints/step_N
    model = {"backend": "flm", "path": str(checkpoint_dir), "name": name}
    settings_doc = {"seed": settings.seed, "limit": limit, "data_dir": str(resolved) if resolved else None}
    summary, lm_results = benchmark(lm, plan, settings, model, settings_doc)
    write_outputs(summary, lm_results, out_dir)
    return compact(summary, out_dir)


def compact(summary: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """The per-stage record: FLM IQ, categories and subtasks (fractions), n, truncation, skips."""
    subs = summary["subtasks"]
    return {
        "flm_iq": summary["flm_iq"]["acc"],
        "complete": summary["flm_iq"]["complete"],
        "categories": {c: v["acc"] for c, v in summary["categories"].items() if v["subtasks"]},
        "partial_categories": [c for c, v in summary["categories"].items() if v["subtasks"] and not v["complete"]],
        "subtasks": {n: s["acc"] for n, s in subs.items()},
        "n": {n: s["n"] for n, s in subs.items()},
        "truncated": {n: s["truncated"] for n, s in subs.items()},
        "skipped": sorted(summary["skipped"]),
        "output_dir": str(out_dir),
    }


def check_iq_eval(run: Any) -> None:
    """Refuse (ConfigError naming ``iq_eval.tasks``) task names the benchmark does not know, before
    anything trains; ``run``: a ``training.orchestration.stage_plans.StagedRun``. (The config layer
    cannot: the names are the benchmark's.)"""
    iq_eval = run.config.iq_eval
    if iq_eval is None:
        return
    try:
        resolve_subtasks(iq_eval.tasks)
    except UnknownSubtaskError as err:
        raise ConfigError("iq_eval.tasks", str(err)) from None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def stages_markdown(stages: Sequence[tuple[str, dict[str, Any] | None]]) -> str:
    """Markdown table of IQ scores (percent) per stage: ``stages`` is ``(stage label, record)``
    in order; ``None`` records (no evaluation) are left out. Empty string when none is left."""
    rows = [(label, rec) for label, rec in stages if rec is not None]
    if not rows:
        return ""
    ok = [rec for _, rec in rows if "error" not in rec]
    names = [n for n in SUBTASKS if any(n in rec["subtasks"] for rec in ok)]
    cats = [c for c in CATEGORIES if any(c in rec["categories"] for rec in ok)]
    head = ["stage", "FLM IQ", *(CATEGORIES[c] for c in cats), *(SUBTASKS[n].title for n in names), "n", "truncated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, rec in rows:
        if "error" in rec:
            lines.append(f"| {label} | not evaluated: {rec['error']} |" + " |" * (len(head) - 2))
            continue
        partial = set(rec.get("partial_categories", []))
        iq = _pct(rec["flm_iq"]) + ("" if rec.get("complete") else " (partial)")
        cells = [
            label,
            iq,
            *(_pct(rec["categories"].get(c)) + (" (partial)" if c in partial else "") for c in cats),
            *(_pct(rec["subtasks"].get(n)) for n in names),
        ]
        ns = sorted({v for v in rec["n"].values() if v is not None})
        cut = sum(v or 0 for v in rec["truncated"].values())
        cells += ["/".join(map(str, ns)) or "?", str(cut)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Accuracy in percent on the first n instances of each subtask (`iq_eval.limit`) of this project's "
        "reconstruction of the FLM-101B IQ tests (not the paper's instances); chance and "
        "per-sample outputs: each stage's `iq/step_N/report.md`. truncated: prompts longer than the "
        "model's context (left-truncated, see docs/iq-benchmark.md)."
    )
    return "\n".join(lines) + "\n"
