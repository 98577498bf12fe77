"""The tiny staged run that tests and benchmarks train: ``configs/runs/tiny_staged.yaml`` (two stages on
mock data, the second grown from the first with MSG), written with the caller's overrides.

    write_staged_run(tmp_path / "run.yaml", tmp_path / "run", "name=t", "stages.1.parallel.tp=2")

Overrides are ``flm train``'s dotted ``key=value`` (``training.config_base.apply_overrides``; values
are YAML, so ``stages.1.train={lr: 1.5e-3}`` sets a whole section), so a caller states only what its
run varies. Shared by ``tests/`` and ``bench/`` (``bench/fault_trials.py``), which is why it lives
here and not in ``tests/``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from training.config_base import apply_overrides, read_yaml

REPO = Path(__file__).resolve().parent.parent
TINY_STAGED = REPO / "configs" / "runs" / "tiny_staged.yaml"

__all__ = ["TINY_STAGED", "staged_run", "write_staged_run"]


def staged_run(out: str | Path, *overrides: str) -> dict:
    """The run config data of ``tiny_staged.yaml`` with ``output_dir=out`` and then ``overrides``
    applied; ``ConfigError`` for a malformed override or a list index out of range."""
    return apply_overrides(read_yaml(TINY_STAGED), [f"output_dir={out}", *overrides])


def write_staged_run(path: str | Path, out: str | Path, *overrides: str) -> Path:
    """Write :func:`staged_run` ``(out, *overrides)`` as a run config YAML at ``path``; returns ``path``."""
    path = Path(path)
    path.write_text(yaml.safe_dump(staged_run(out, *overrides), sort_keys=False))
    return path
