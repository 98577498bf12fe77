"""Every layout computes the same thing: losses under TP2, DP2, DP2 with the distributed optimizer
and overlapped grad-reduce / param-gather, and the interleaved pipeline schedule (PP2 x 2 virtual
stages, on a 4-layer model) equal the single-process run from the same weights. The other layouts
are compared with one process where their world is already set up (``LAYOUTS`` in tests/helpers.py
says where): FLM-101B's 8-process stage layouts (TP2 x DP4, TP2 x PP2 x DP2, sequence parallel,
distributed optimizer) by the staged run of ``tests/training/orchestration/test_stages.py``, PP2 by
the resume chains of ``test_resume.py``.

The loss logged at step 1 is the forward loss of the first batch on the initial weights; steps
2..8 follow 7 optimizer steps. Real processes, gloo, the real ``flm train`` command. The runs are
the session fixture ``layout_run`` (tests/conftest.py), whose checkpoints the resume tests reuse.
"""

from __future__ import annotations

import pytest

from tests.helpers import LAYOUTS, losses, reference_layout


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in LAYOUTS if LAYOUTS[n][0] > 1])
def test_layout_matches_single_process(layout_run, name):
    ref = losses(layout_run(reference_layout(name)))
    got = losses(layout_run(name))
    assert sorted(ref) == sorted(got) == list(range(1, 9))
    assert got[1] == pytest.approx(ref[1], rel=1e-5), "forward loss on the same weights"
    for step in range(2, 9):
        assert got[step] == pytest.approx(ref[step], rel=1e-4), f"step {step}"
