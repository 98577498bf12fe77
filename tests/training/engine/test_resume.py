"""Resume equality: a run stopped at step k and resumed (also under another layout, also with
the distributed optimizer) logs the same losses for steps k+1..k+5 as the uninterrupted run."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import LAYOUTS, TINY, TINY_FLAGS, flm, losses

DISTOPT = ["parallel.distributed_optimizer=true"]


def resume_chain(tmp_path, full, second: list[str], third: list[str]) -> None:
    """``full``: a finished 8-step run (the reference, a ``layout_run``); resume its step-3 checkpoint
    under ``second``, and that run's step-6 checkpoint under ``third``: both continue its losses."""
    mid, last = tmp_path / "mid", tmp_path / "last"
    step3 = full / "checkpoints" / "step_0000003"
    flm("train", str(TINY), "train.steps=8", f"output_dir={mid}", "--resume", str(step3), *TINY_FLAGS, *second, nproc=2)
    step6 = mid / "checkpoints" / "step_0000006"
    flm("train", str(TINY), "train.steps=8", f"output_dir={last}", "--resume", str(step6), *TINY_FLAGS, *third, nproc=2)
    ref = losses(full)
    for run, steps in ((mid, [4, 5, 6, 7, 8]), (last, [7, 8])):
        got = losses(run)
        assert sorted(got) == steps, run.name
        for step in steps:
            assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), f"{run.name} step {step}"


@pytest.mark.slow
def test_distributed_optimizer_resumes_across_layouts_and_into_overlap(tmp_path, layout_run):
    """The distributed optimizer's sharded state: DP2 with grad-reduce and param-gather overlap ->
    PP2 -> DP2 with overlap again, each resume continuing the uninterrupted run. The tiny model ties
    its embeddings, so PP2's first stage keeps the embedding in a grad bucket of its own, whose
    optimizer state megatron-core saves from the wrong offsets unless worked around
    (``megatron_checkpoint._distributed_optimizer_state_in_buffer_coordinates``)."""
    overlap = LAYOUTS["dp2-distopt-overlap"][1]
    resume_chain(tmp_path, layout_run("dp2-distopt-overlap"), ["parallel.pp=2", *DISTOPT], overlap)


@pytest.mark.slow
def test_resume_from_tp2_into_pp2_and_back_matches_uninterrupted(tmp_path, layout_run):
    """A TP2 run's step-3 checkpoint resumed under PP2, and that run's step-6 checkpoint resumed under
    TP2 again: both directions of resharding continue the uninterrupted TP2 run's losses."""
    resume_chain(tmp_path, layout_run("tp2"), ["parallel.pp=2"], ["parallel.tp=2"])


@pytest.mark.slow
def test_resume_latest_continues_and_completed_run_is_left_alone(tmp_path, tiny_trained):
    run = tmp_path / "run"
    shutil.copytree(tiny_trained, run)  # a finished 3-step run
    flm("train", str(TINY), "train.steps=6", f"output_dir={run}", "--resume", *TINY_FLAGS)
    steps = [s for s in losses(run)]
    assert steps == [1, 2, 3, 4, 5, 6]
    metrics_before = (run / "metrics.jsonl").read_bytes()
    checkpoints_before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    again = flm("train", str(TINY), "train.steps=6", f"output_dir={run}", "--resume", *TINY_FLAGS)
    assert "at step 6" in again.stderr
    # nothing was trained again: no new metrics record, no checkpoint written or touched
    assert (run / "metrics.jsonl").read_bytes() == metrics_before
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == checkpoints_before


def test_resume_into_other_model_shape_is_refused(tmp_path, tiny_trained):
    bad = flm(
        "train",
        str(TINY),
        "train.steps=2",
        "model.hidden_size=128",
        f"output_dir={tmp_path / 'other'}",
        "--resume",
        str(tiny_trained / "checkpoints"),
        *TINY_FLAGS,
        check=False,
    )
    assert bad.returncode == 2
    assert "model.hidden_size=64" in bad.stderr and "128" in bad.stderr
    missing = flm("train", str(TINY), "--resume", str(tmp_path / "nowhere"), *TINY_FLAGS, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
