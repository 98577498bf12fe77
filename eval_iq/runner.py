"""Run selected IQ subtasks on an lm-eval ``LM`` through lm-eval itself.

Tasks are loaded from ``eval_iq/tasks`` only (``include_defaults=False``: no scan of lm-eval's
built-in tasks); benchmark options reach the dataset hook as task metadata (see
:mod:`eval_iq.lm_hooks`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from eval_iq.errors import IQError
from eval_iq.generate import DEFAULT_SEED, generate
from eval_iq.instances import sha256_of
from eval_iq.offline import is_offline
from eval_iq.registry import SubtaskSpec
from eval_iq.report import summarize
from eval_iq.symbolic_data import SOURCES, local_file, resolve_data_dir
from eval_iq.truncation import truncation_report
from eval_iq.yaml_tasks import TASKS_DIR


@dataclass
class RunSettings:
    """Benchmark options of one run (``None`` = the subtask's default)."""

    seed: int = DEFAULT_SEED
    size: int | None = None
    shots: int | None = None
    limit: int | None = None
    data_dir: Path | None = None

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"iq_seed": self.seed}
        if self.size is not None:
            meta["iq_size"] = self.size
        if self.shots is not None:
            meta["iq_shots"] = self.shots
        if self.data_dir is not None:
            meta["iq_data_dir"] = str(self.data_dir)
        return meta


@dataclass
class Plan:
    """Subtasks that will run, and those left out with the reason."""

    run: list[SubtaskSpec]
    skipped: dict[str, str] = field(default_factory=dict)


def unavailable_reason(spec: SubtaskSpec, data_dir: Path | None) -> str | None:
    """Why ``spec`` cannot get its data (``None`` when it can, as far as can be told offline)."""
    if spec.category != "symbolic":
        return None
    resolved = resolve_data_dir(data_dir)
    if resolved is None:
        if SOURCES[spec.name].hub_path is None:
            return f"{spec.name} has no hub copy; pass --data-dir"
        if is_offline():
            return f"{spec.name} needs --data-dir (or $FLM_IQ_DATA_DIR) when offline"
        return None
    try:
        for which in ("eval", "shots"):
            local_file(SOURCES[spec.name], resolved, which)
    except IQError as err:
        return str(err)
    return None


def make_plan(specs: list[SubtaskSpec], data_dir: Path | None, skip_unavailable: bool) -> Plan:
    """Check data availability up front; raise (listing every problem) unless skipping."""
    reasons = {s.name: r for s in specs if (r := unavailable_reason(s, data_dir)) is not None}
    if reasons and not skip_unavailable:
        raise IQError(
            "data missing for: " + "; ".join(reasons.values()) + ". Use --skip-unavailable to run the other subtasks."
        )
    plan = Plan([s for s in specs if s.name not in reasons], reasons)
    if not plan.run:
        raise IQError("no subtask left to run: " + "; ".join(reasons.values()))
    return plan


def instance_digest(spec: SubtaskSpec, settings: RunSettings) -> dict[str, Any]:
    """Count and SHA-256 of the instances a run uses (before ``--limit``)."""
    insts = generate(spec.name, settings.seed, settings.size, settings.shots, settings.data_dir)
    return {"instances": len(insts), "instances_sha256": sha256_of(insts)}


def evaluate(lm: Any, specs: list[SubtaskSpec], settings: RunSettings, bootstrap_iters: int = 1000) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on the given subtasks; returns its results dict.

    Per-sample logs are kept (``results["samples"]``). ``bootstrap_iters`` only enables the
    closed-form standard error of the mean (no resampling is done for ``acc``).
    """

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=settings.metadata())
    results = simple_evaluate(
        model=lm,
        tasks=[s.task for s in specs],
        task_manager=manager,
        limit=settings.limit,
        log_samples=True,
        bootstrap_iters=bootstrap_iters,
        random_seed=settings.seed,
        numpy_random_seed=settings.seed,
        torch_random_seed=settings.seed,
        fewshot_random_seed=settings.seed,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results (non-zero rank?)")
    return results


def benchmark(
    lm: Any,
    plan: Plan,
    settings: RunSettings,
    model_info: dict[str, Any],
    settings_doc: dict[str, Any],
    digests: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``plan`` on ``lm`` and summarise: ``(results document, lm-eval results)``.

    The results document (:func:`eval_iq.report.summarize`) has the instance digests (computed
    here unless given: :func:`instance_digest` per subtask), the skipped subtasks and the
    truncation counts (:mod:`eval_iq.truncation`, which warns); ``model_info`` gains the model's
    ``max_length`` when it has one.
    """

    if digests is None:
        digests = {s.name: instance_digest(s, settings) for s in plan.run}
    lm_results = evaluate(lm, plan.run, settings)
    truncation = truncation_report(lm, lm_results, {s.name: s.task for s in plan.run})
    if getattr(lm, "max_length", None) is not None:
        model_info = {**model_info, "max_length": int(lm.max_length)}
    summary = summarize(lm_results, plan.run, settings_doc, model_info, digests, plan.skipped, truncation)
    return summary, lm_results
