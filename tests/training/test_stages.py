"""Staged growth runs: a 2-stage tiny run with a layout change (DP2 -> TP2) on 2 processes, the
exactness check at the transition, and kill-and-resume right after the growth and inside the mask
ramp giving the same losses as the uninterrupted run."""

from __future__ import annotations

import json

import pytest

from bench.staged_run import write_staged_run
from tests.helpers import flm, read_metrics
from training.config_base import ConfigError
from training.stage_plans import load_run

#: configs/runs/tiny_staged.yaml grown in depth too (2 -> 4 layers, interleaved) and from DP2 to TP2
RUN = (
    "name=t",
    "train.warmup_steps=2",
    "checkpoint.keep_last=10",
    "stages.0.parallel={tp: 1}",
    "stages.0.tokens=3072",
    "stages.1.model.num_layers=4",
    "stages.1.parallel={tp: 2}",
    "stages.1.tokens=4096",
    "stages.1.train={lr: 1.5e-3, warmup_steps: 1}",
    "stages.1.growth={default_operator: msg, ramp_steps: 4, depth_placement: interleave}",
)


def write_run(tmp_path, name):
    return write_staged_run(tmp_path / f"{name}.yaml", tmp_path / name, *RUN)


def last_by_step(run_dir):
    out = {}
    for r in read_metrics(run_dir):
        out[r["step"]] = r  # a step re-run after a resume overwrites the killed run's record
    return out


@pytest.mark.slow
def test_two_stage_run_is_exact_at_growth_and_resumes_anywhere(tmp_path):
    full = write_run(tmp_path, "full")
    flm("train", str(full), nproc=2)
    growth = json.loads((tmp_path / "full" / "stage1-g" / "growth.json").read_text())
    assert growth["preserved"] and growth["exact"] and growth["verify"]["max_abs_dlogit"] <= 1e-10
    ref = last_by_step(tmp_path / "full" / "stage1-g")
    assert sorted(ref) == list(range(1, 9))
    assert [ref[s]["mask_value"] for s in (1, 2, 3, 4, 5)] == [0.0, 0.25, 0.5, 0.75, None]

    killed = write_run(tmp_path, "killed")
    # killed right after the growth (stage 1 has no checkpoint yet) ...
    bad = flm("train", str(killed), nproc=2, check=False, env={"FLM_FAULT_AT": "t/g:1"})
    assert bad.returncode != 0 and (tmp_path / "killed" / "stage1-g" / "grown").is_dir()
    # ... then inside the mask ramp (latest checkpoint: step 2, masks at 0.5) ...
    bad = flm("train", str(killed), "--resume", nproc=2, check=False, env={"FLM_FAULT_AT": "t/g:3"})
    assert bad.returncode != 0
    flm("train", str(killed), "--resume", nproc=2)
    got = last_by_step(tmp_path / "killed" / "stage1-g")
    for step in range(1, 9):
        assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-6), f"stage 1 step {step}"
        assert got[step]["mask_value"] == ref[step]["mask_value"]
    s0_ref, s0 = last_by_step(tmp_path / "full" / "stage0-s"), last_by_step(tmp_path / "killed" / "stage0-s")
    assert [s0[s]["loss"] for s in range(1, 7)] == pytest.approx([s0_ref[s]["loss"] for s in range(1, 7)], rel=1e-6)


@pytest.mark.parametrize(
    "override, key, hint",
    [
        ("stages.1.model.hidden_size=32", "stages[1].growth.new.hidden", "never shrinks"),
        ("stages.1.tokens=0", "stages[1].tokens", "must be > 0"),
        ("stages.1.parallel.tp=3", "stages[1].model.num_attention_heads", "not divisible by parallel.tp=3"),
        ("stages.0.growth={ramp_steps: 3}", "stages[0].growth", "first stage"),
        ("stages.1.growth=null", "stages[1].growth", "needs a growth section"),
        ("stages.1.growth.operators={depth: stack}", "stages[1].growth.operators.depth", "exact: false"),
    ],
)
def test_invalid_stage_lists_name_the_key(tmp_path, override, key, hint):
    with pytest.raises(ConfigError) as info:
        load_run(write_run(tmp_path, "x"), [override])
    assert info.value.key == key, str(info.value)
    assert hint in str(info.value)


def test_layout_not_fitting_the_process_count_is_refused_before_anything_trains(tmp_path):
    """A later stage's layout is refused at launch, not after the earlier stages have trained: by the
    ``--nproc`` launcher before it starts torchrun, and by the workers themselves (any launcher) before
    stage 0's first step."""
    run = write_run(tmp_path, "x")
    bad = flm("train", str(run), "stages.1.parallel.tp=4", "stages.1.model.num_attention_heads=8", nproc=2, check=False)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "config key 'stages[1].parallel': world size 2 is not divisible by tp x pp = 4 x 1" in bad.stderr
    assert "torchrun" not in bad.stderr and not (tmp_path / "x").exists()
    bad = flm("train", str(run), "stages.1.parallel.tp=2", check=False)  # one process, no launcher
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "config key 'stages[1].parallel': world size 1 is not divisible by tp x pp = 2 x 1" in bad.stderr
    assert not (tmp_path / "x" / "stage0-s").exists()
    bad = flm("train", str(run), "stages.1.train.global_batch_size=7", nproc=2, check=False)
    assert bad.returncode == 2 and "config key 'stages[1].train.global_batch_size'" in bad.stderr


@pytest.mark.parametrize("policy, warmup", [("inherit", 1), ("rewind", 0), ("restart", 2)])
def test_lr_policy_at_growth_sets_the_stage_schedule(tmp_path, policy, warmup):
    from training.config import stage_config

    cfg = load_run(write_run(tmp_path, "x"), ["lr_schedule.kind=per_stage", f"stages.1.growth.lr_policy={policy}"])
    stage = stage_config(cfg, 1)
    assert stage.train.warmup_steps == warmup  # the run's warmup is 2, stage 1 asks for 1
    assert stage.train.lr == 1.5e-3 and stage.train.steps == 8
    assert stage.output_dir.endswith("stage1-g") and stage.parallel.tp == 2


@pytest.mark.slow
def test_dryrun_command_writes_the_report(tmp_path):
    """`flm dryrun` machinery on a tiny staged config (mock data; the real dry run is the README's command)."""
    run = write_run(tmp_path, "dry")
    out = flm("dryrun", "--config", str(run), "--skip-iq", "stages.1.tokens=1024")
    report = tmp_path / "dry" / "report"
    assert "report in" in out.stdout
    assert (report / "loss_vs_tokens.png").stat().st_size > 10_000
    table = (report / "stages.md").read_text()
    assert "| 1 | g | TP2 PP1 | 4 x 128" in table and "exact: max abs Δlogit" in table
    records = [json.loads(line) for line in (report / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {0, 1}
    again = flm("dryrun", "--config", str(run), "--skip-iq", "stages.1.tokens=1024")  # re-run: resumes, report again
    assert "is complete" in again.stderr
