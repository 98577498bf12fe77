"""Fixtures of the growth tests (helpers: ``tests/growth/helpers.py``)."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _tiny_models(one_thread):
    """Every growth test runs tiny models: one intra-op thread."""
