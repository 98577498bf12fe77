"""Fixtures shared by every test package (helpers are in ``tests/helpers.py``).

The trained runs here are session-scoped and shared across test files (issue 26: the suite in 20
minutes on 2 cores): every ``flm`` start costs seconds of imports, so a run that several files need
is trained once, on first request. They are read-only: copy one before resuming into it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before any test module imports megatron)
from tests.helpers import DEEP, LAYOUTS, SHARED_DATA, TINY, TINY_FLAGS, flm, initial_checkpoint


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA} (it exists in the project's CI, not in a fresh clone)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add overhead (up to 100x on a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory) -> Path:
    """The output directory of a finished 3-step single-process run of ``configs/runs/tiny.yaml``
    with ``TINY_FLAGS`` (its checkpoint: ``<dir>/checkpoints/step_0000003``): trained weights to start
    from (``--init-from``), a checkpoint to resume from, a finished run to resume in a copy of."""
    run = tmp_path_factory.mktemp("tiny_trained") / "run"
    flm("train", str(TINY), "train.steps=3", f"output_dir={run}", *TINY_FLAGS)
    return run


@pytest.fixture(scope="session")
def layout_run(tmp_path_factory, tiny_trained):
    """``layout_run(name)``: the output directory of 8 steps of ``configs/runs/tiny.yaml`` under the
    layout ``LAYOUTS[name]``, from ``tiny_trained``'s weights (``--init-from``; for the ``DEEP`` model,
    a 4-layer model's initial weights saved in this process), with ``TINY_FLAGS`` (checkpoints at
    steps 3, 6, 8). Trained on the first request: the layout-equality test compares their losses,
    the resume tests resume their checkpoints under other layouts."""
    root = tmp_path_factory.mktemp("layouts")
    inits = {False: tiny_trained / "checkpoints"}
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            nproc, overrides = LAYOUTS[name]
            deep = DEEP[0] in overrides
            if deep not in inits:
                inits[deep] = initial_checkpoint(root / "deep-init", *DEEP)
            init = inits[deep]
            out = root / name
            flm(
                "train",
                str(TINY),
                "train.steps=8",
                f"output_dir={out}",
                "--init-from",
                str(init),
                *TINY_FLAGS,
                *overrides,
                nproc=nproc,
            )
            done[name] = out
        return done[name]

    return get
