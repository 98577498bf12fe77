"""Every layout computes the same thing: losses under TP2, PP2, DP2, TP2xPP2 (and the distributed
optimizer, sequence parallelism) equal the single-process run from the same weights.

The loss logged at step 1 is the forward loss of the first batch on the initial weights; steps
2..6 follow 5 optimizer steps. Real processes, gloo, the real ``flm train`` command.
"""

from __future__ import annotations

import pytest

from tests.helpers import REPO, flm, losses

TINY = str(REPO / "configs" / "runs" / "tiny.yaml")
COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "train.eval_interval=1000"]

LAYOUTS = {
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
    "dp2": (2, []),
    "dp2-distopt": (2, ["parallel.distributed_optimizer=true"]),
    "dp2-distopt-overlap": (
        2,
        [
            "parallel.distributed_optimizer=true",
            "parallel.overlap_grad_reduce=true",
            "parallel.overlap_param_gather=true",
        ],
    ),
    "tp2-sp": (2, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    "tp2xpp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    flm("train", TINY, "train.steps=1", f"output_dir={root / 'init'}", *COMMON)
    init = root / "init" / "checkpoints"
    flm("train", TINY, "train.steps=6", f"output_dir={root / 'single'}", "--init-from", str(init), *COMMON)
    return root, init, losses(root / "single")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(reference, name):
    root, init, ref = reference
    nproc, overrides = LAYOUTS[name]
    flm(
        "train",
        TINY,
        "train.steps=6",
        f"output_dir={root / name}",
        "--init-from",
        str(init),
        *COMMON,
        *overrides,
        nproc=nproc,
    )
    got = losses(root / name)
    assert sorted(got) == list(range(1, 7))
    assert got[1] == pytest.approx(ref[1], rel=1e-5), "forward loss on the same weights"
    for step in range(2, 7):
        assert got[step] == pytest.approx(ref[step], rel=1e-4), f"step {step}"
