"""Every layout computes the same thing: losses under TP2, PP2, DP2, TP2xPP2 (and the distributed
optimizer, sequence parallelism) and the interleaved pipeline schedule (PP2 x 2 virtual stages, on
a 4-layer model) equal the single-process run from the same weights. FLM-101B's 8-process stage
layouts are compared with one process by the staged run of
``tests/training/orchestration/test_stages.py``.

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
