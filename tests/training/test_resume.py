"""Resume equality: a run stopped at step k and resumed (also under another layout, also with
the distributed optimizer) logs the same losses for steps k+1..k+5 as the uninterrupted run."""

from __future__ import annotations

import pytest

from tests.helpers import REPO, flm, losses

TINY = str(REPO / "configs" / "runs" / "tiny.yaml")
COMMON = [
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "train.eval_interval=1000",
    "checkpoint.save_interval=3",
    "checkpoint.keep_last=5",
]

DISTOPT = ["parallel.distributed_optimizer=true"]
OVERLAP = [*DISTOPT, "parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true"]


def resume_chain(tmp_path, first: list[str], second: list[str], third: list[str]) -> None:
    """Train 8 steps under ``first`` (the reference); resume its step-3 checkpoint under ``second``,
    and that run's step-6 checkpoint under ``third``: both continue the reference's losses."""
    full, mid, last = tmp_path / "full", tmp_path / "mid", tmp_path / "last"
    flm("train", TINY, "train.steps=8", f"output_dir={full}", *COMMON, *first, nproc=2)
    step3 = full / "checkpoints" / "step_0000003"
    flm("train", TINY, "train.steps=8", f"output_dir={mid}", "--resume", str(step3), *COMMON, *second, nproc=2)
    step6 = mid / "checkpoints" / "step_0000006"
    flm("train", TINY, "train.steps=8", f"output_dir={last}", "--resume", str(step6), *COMMON, *third, nproc=2)
    ref = losses(full)
    for run, steps in ((mid, [4, 5, 6, 7, 8]), (last, [7, 8])):
        got = losses(run)
        assert sorted(got) == steps, run.name
        for step in steps:
            assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), f"{run.name} step {step}"


@pytest.mark.slow
def test_distributed_optimizer_resumes_across_layouts_and_into_overlap(tmp_path):
    """The distributed optimizer's sharded state: DP2 with grad-reduce and param-gather overlap ->
    TP2 -> DP2 with overlap again, each resume continuing the uninterrupted run."""
    resume_chain(tmp_path, OVERLAP, ["parallel.tp=2", *DISTOPT], OVERLAP)


@pytest.mark.slow
def test_resume_from_tp2_into_pp2_and_back_matches_uninterrupted(tmp_path):
    """A TP2 run's step-3 checkpoint resumed under PP2, and that run's step-6 checkpoint resumed under
    TP2 again: both directions of resharding continue the uninterrupted TP2 run's losses."""
    resume_chain(tmp_path, ["parallel.tp=2"], ["parallel.pp=2"], ["parallel.tp=2"])


@pytest.mark.slow
def test_resume_latest_continues_and_completed_run_is_left_alone(tmp_path):
    run = tmp_path / "run"
    flm("train", TINY, "train.steps=3", f"output_dir={run}", *COMMON)
    flm("train", TINY, "train.steps=6", f"output_dir={run}", "--resume", *COMMON)
    steps = [s for s in losses(run)]
    assert steps == [1, 2, 3, 4, 5, 6]
    metrics_before = (run / "metrics.jsonl").read_bytes()
    checkpoints_before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    again = flm("train", TINY, "train.steps=6", f"output_dir={run}", "--resume", *COMMON)
    assert "at step 6" in again.stderr
    # nothing was trained again: no new metrics record, no checkpoint written or touched
    assert (run / "metrics.jsonl").read_bytes() == metrics_before
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == checkpoints_before


def test_resume_into_other_model_shape_is_refused(tmp_path):
    run = tmp_path / "run"
    flm("train", TINY, "train.steps=1", f"output_dir={run}", *COMMON)
    bad = flm(
        "train",
        TINY,
        "train.steps=2",
        "model.hidden_size=128",
        f"output_dir={tmp_path / 'other'}",
        "--resume",
        str(run / "checkpoints"),
        *COMMON,
        check=False,
    )
    assert bad.returncode == 2
    assert "model.hidden_size=64" in bad.stderr and "128" in bad.stderr
    missing = flm("train", TINY, "--resume", str(tmp_path / "nowhere"), *COMMON, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
