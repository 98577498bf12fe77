"""Fixtures shared by every test package (helpers are in ``tests/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before any test module imports megatron)
from tests.helpers import SHARED_DATA


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
