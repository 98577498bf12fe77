"""Fixtures shared by every test package (helpers are in ``tests/helpers.py``).

The trained runs here are session-scoped and shared across test files (issue 26: the suite in 20
minutes on 2 cores): every ``flm`` start costs seconds of imports, so a run that several files need
is trained once, on first request. They are read-only: copy one before resuming into it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before any test module imports megatron)
from tests.helpers import DEEP, LAYOUTS, SHARED_DATA, TINY, TINY_FLAGS, flm, initial_checkpoint

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one worker per core (`make test`): a second intra-op thread per worker only oversubscribes the cores
    torch.set_num_threads(1)


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


#: test files that share the session fixtures above (``layout_run``, ``tiny_trained``): one xdist worker runs
#: them all, so the runs are trained once
_SHARED_RUN_FILES = (
    "tests/training/engine/test_layouts.py",
    "tests/training/engine/test_resume.py",
    "tests/growth/test_grow_checkpoint.py",
)


def _scope(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "shared-runs" if path in _SHARED_RUN_FILES else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``pytest -n 2 --dist loadfile`` (``make test``): each file runs on one worker, so its module
    fixtures are built once, and the files that share trained session runs run on one worker together.
    (xdist's own ``loadgroup`` marks do not group under pytest 9, whose node ids xdist cannot rewrite.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # an optional plugin: imported only when it schedules

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return FileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first (a stable sort): under xdist the longest work is handed out first,
    so neither worker is left with a long file at the end while the other idles."""
    slow = {_scope(item.nodeid) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: _scope(item.nodeid) not in slow)
