"""The IQ benchmark's group scores in lm-eval: FLM IQ as the mean of its categories, partial groups
marked.

lm-eval (0.4.13) computes every group score in ``Group.aggregate`` from the group's *leaf* tasks;
``aggregate_metric_list`` only chooses a size-weighted or an unweighted mean of the leaves (its
``aggregation`` field accepts a callable, but ``Group.aggregate`` never calls it). The spec
defines FLM IQ as the unweighted mean of the four category scores, which differs from the mean of
the 17 leaves (rules has 3 subtasks, symbolic mapping 8). So the IQ group YAMLs carry a metadata
key :data:`METADATA_KEY` and :func:`install` wraps ``Group.aggregate`` (once per process; groups
without the key are untouched):

* ``children``: each aggregated metric is the unweighted mean of the *direct* children's values
  (subgroups are aggregated before their parent), with the stderr of an unweighted mean. A
  child without a value leaves the group without one (as ``flm iq`` reports no FLM IQ without
  all four categories).
* ``leaves``: lm-eval's own leaf aggregation.

In both modes a group whose leaf tasks lack a value (a skipped dataset, see
:class:`eval_iq.lm_task.IQTask`) gets the display alias ``"<alias> (partial: without
...)"`` and a warning, so lm-eval's table says which scores are partial.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from lm_eval.api.group import Group
from lm_eval.api.metrics import unweighted_mean_stderr

logger = logging.getLogger(__name__)

METADATA_KEY = "iq_aggregate"
MODES = ("children", "leaves")
_MARK = "_eval_iq_wrapped"


def _has_value(metrics: dict[str, Any] | None, key: str) -> bool:
    return bool(metrics) and key in metrics  # type: ignore[operator]


def _metric_keys(group: Any) -> list[tuple[str, str]]:
    keys = []
    for agg in group.aggregate_metric_list or []:
        for flt in agg.filter_list or ["none"]:
            keys.append((f"{agg.metric},{flt}", f"{agg.metric}_stderr,{flt}"))
    return keys


def _child_name(child: Any) -> str:
    return child.task_name if hasattr(child, "task_name") else child.name


def aggregate_children(group: Any, task_metrics: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """Replace ``out``'s metrics by the unweighted mean over ``group``'s direct children."""

    children = [_child_name(c) for c in group]
    for key, stderr_key in _metric_keys(group):
        values = [task_metrics[c][key] for c in children if _has_value(task_metrics.get(c), key)]
        if len(values) != len(children):
            missing = [c for c in children if not _has_value(task_metrics.get(c), key)]
            logger.warning("group %s: no %s for %s, so no %s value", group.name, key, ", ".join(missing), group.name)
            out.pop(key, None)
            out.pop(stderr_key, None)
            continue
        out[key] = sum(values) / len(values)
        errs = [task_metrics[c].get(stderr_key) for c in children]
        ok = all(isinstance(e, (int, float)) and not math.isnan(e) for e in errs)
        out[stderr_key] = float(unweighted_mean_stderr(errs)) if ok else "N/A"
    return out


def missing_leaves(group: Any, task_metrics: dict[str, Any]) -> list[str]:
    """Leaf tasks of ``group`` without a value for some aggregated metric."""
    keys = [k for k, _ in _metric_keys(group)]
    return [
        t.task_name
        for t in group.get_all_tasks()
        if not all(_has_value(task_metrics.get(t.task_name), k) for k in keys)
    ]


def install() -> None:
    """Wrap ``lm_eval.api.group.Group.aggregate`` for groups with :data:`METADATA_KEY` (idempotent)."""

    original = Group.aggregate
    if getattr(original, _MARK, False):
        return

    def aggregate(self, task_metrics):
        out = original(self, task_metrics)
        mode = (self.metadata or {}).get(METADATA_KEY)
        if mode is None:
            return out
        if mode not in MODES:
            raise ValueError(f"group {self.name}: metadata {METADATA_KEY}={mode!r}; allowed: {', '.join(MODES)}")
        if mode == "children":
            out = aggregate_children(self, task_metrics, out)
        missing = missing_leaves(self, task_metrics)
        if missing:
            out["alias"] = f"{out.get('alias', self.name)} (partial: without {', '.join(missing)})"
            logger.warning("group %s is partial: no score for %s", self.name, ", ".join(missing))
        return out

    setattr(aggregate, _MARK, True)
    aggregate.__wrapped__ = original  # type: ignore[attr-defined]
    aggregate.__doc__ = original.__doc__
    Group.aggregate = aggregate
