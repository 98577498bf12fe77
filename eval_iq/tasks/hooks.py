"""Hook module the task YAMLs in this folder reference as ``!function hooks.<name>``.

lm-eval imports this file by path. It binds the YAMLs to the ``eval_iq`` code of the checkout
they belong to (the folder two levels up), not to whatever ``eval_iq`` happens to be installed:

* if ``eval_iq`` is not imported yet, the checkout root is put first on ``sys.path`` and the
  sibling package is imported, so an installed copy elsewhere is never used by mistake;
* if another copy was already imported in this process (say ``import eval_iq`` from an editable
  install of a different checkout before lm-eval loaded these tasks), its harness version must
  equal these YAMLs' ``metadata.version``: a mismatch is refused with an error naming both paths
  (the instances would silently differ); equal versions are used with a warning naming both.

It exports the task class (:class:`eval_iq.lm_task.IQTask`), the dataset and scoring functions
(:mod:`eval_iq.lm_hooks`) and installs the IQ group aggregation (:mod:`eval_iq.lm_groups`).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from pathlib import Path

_logger = logging.getLogger("eval_iq.tasks.hooks")
_TASKS = Path(__file__).resolve().parent
_ROOT = _TASKS.parents[1]
_SIBLING = _ROOT / "eval_iq"


def _yaml_version() -> str:
    """``metadata.version`` of these task YAMLs (all are rendered with the same version)."""
    text = (_TASKS / "task_counting.yaml").read_text(encoding="utf-8")
    match = re.search(r"^metadata:\n  version: (\S+)$", text, flags=re.M)
    if match is None:  # pragma: no cover - the YAMLs are generated; a test checks them
        raise ImportError(f"{_TASKS / 'task_counting.yaml'}: no metadata.version")
    return match.group(1)


def _sibling_is_found() -> bool:
    spec = importlib.util.find_spec("eval_iq")
    return spec is not None and spec.origin is not None and Path(spec.origin).resolve().parent == _SIBLING.resolve()


def _import_eval_iq():
    if "eval_iq" not in sys.modules and (_SIBLING / "__init__.py").is_file() and not _sibling_is_found():
        sys.path.insert(0, str(_ROOT))
    import eval_iq  # after sys.path points at the sibling checkout (module docstring)

    loaded = Path(eval_iq.__file__).resolve().parent
    if loaded != _SIBLING.resolve():
        version = _yaml_version()
        if str(eval_iq.__version__) != version:
            raise ImportError(
                f"the IQ task YAMLs in {_TASKS} are version {version}, but this process already "
                f"imported eval_iq {eval_iq.__version__} from {loaded}; their instances differ. Use "
                f"the YAMLs of that checkout (--include_path {loaded / 'tasks'}) or run in a fresh "
                f"process that has not imported eval_iq"
            )
        _logger.warning(
            "IQ task YAMLs in %s run the already imported eval_iq %s from %s (same version)",
            _TASKS,
            eval_iq.__version__,
            loaded,
        )
    from eval_iq import lm_groups, lm_hooks, lm_task  # the checkout checked above

    lm_groups.install()
    return lm_hooks, lm_task


_impl, _task = _import_eval_iq()
build_dataset = _impl.build_dataset
process_generation = _impl.process_generation
IQTask = _task.IQTask
