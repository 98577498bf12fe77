"""Hook module the task YAMLs in this folder reference as ``!function hooks.<name>``.

lm-eval imports this file by path, so the YAMLs work whatever the working directory. When the
``eval_iq`` package is not installed (a source checkout), the checkout root two levels up is put
on ``sys.path`` so the real implementation in :mod:`eval_iq.lm_hooks` can be imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from eval_iq import lm_hooks as _impl
except ModuleNotFoundError as err:  # pragma: no cover - depends on how the project is installed
    if err.name != "eval_iq":
        raise
    _root = Path(__file__).resolve().parents[2]
    if not (_root / "eval_iq" / "__init__.py").is_file():
        raise
    sys.path.insert(0, str(_root))
    from eval_iq import lm_hooks as _impl

build_dataset = _impl.build_dataset
process_generation = _impl.process_generation
