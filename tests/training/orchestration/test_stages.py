"""Staged growth runs: FLM-101B's stage layouts on 8 processes against one process (the growth's
exactness check, the engine's transition check and its refusal, kill-and-resume right after the
growth and inside the mask ramp, per-stage checkpoint roots), the stage config rules, the dry run."""

from __future__ import annotations

import json

import pytest

from bench.staged_run import write_staged_run
from tests.helpers import REPO, flm, initial_checkpoint, read_metrics
from training.config_base import ConfigError
from training.orchestration.stage_plans import load_run

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
    "stages.1.train={lr: 1.5e-3}",
    "stages.1.growth={default_operator: msg, ramp: {steps: 4}, depth: {placement: interleave}}",
)


def write_run(tmp_path, name):
    return write_staged_run(tmp_path / f"{name}.yaml", tmp_path / name, *RUN)


def last_by_step(run_dir):
    out = {}
    for r in read_metrics(run_dir):
        out[r["step"]] = r  # a step re-run after a resume overwrites the killed run's record
    return out


#: FLM-101B's first two stage layouts (configs/runs/flm101b.yaml: 16B on TP2 x DP, 51B on TP x PP x DP,
#: sequence parallel and distributed optimizer) on 8 processes, with its untied embeddings;
#: tiny_staged.yaml's growth is the 16B -> 51B step's kind (hidden, FFN and heads by MSG), here grown
#: in depth too (2 -> 4 layers, interleaved) with a 4-step mask ramp
FLM = (
    "name=f",
    "train.warmup_steps=2",
    "checkpoint.keep_last=10",
    "stages.0.model.tie_embeddings=false",
    "stages.1.model.tie_embeddings=false",
    "stages.1.model.num_layers=4",
    "stages.1.growth={default_operator: msg, ramp: {steps: 4}, depth: {placement: interleave}}",
    "stages.1.train={lr: 1.5e-3}",
    "stages.0.tokens=2048",
    "stages.0.parallel={tp: 2, sequence_parallel: true, distributed_optimizer: true}",
    "stages.1.parallel={tp: 2, pp: 2, sequence_parallel: true, distributed_optimizer: true}",
)


@pytest.mark.slow
def test_flm_layouts_grow_verified_resume_after_a_kill_and_match_one_process(tmp_path):
    """The suite's staged growth chain: TP2 x DP4 -> TP2 x PP2 x DP2 (SP, distributed optimizer) on
    8 gloo processes against one process from the same initial weights, five launches:

    - one process, killed right after the growth (stage 1 has no checkpoint yet): the grown
      checkpoint is on disk; a resume whose stage-0 transition reference the grown model does not
      reproduce (the engine's check: same batch, old and new model) stops before stage 1's first
      step with exit status 1; the resume with the true reference trains to the end, float64-verified
      growth, masks ramping 0 -> 1 over 4 steps;
    - 8 processes with ``checkpoint.dir`` (each stage under its own checkpoint root), killed inside
      the grown stage's mask ramp (latest checkpoint: step 2, masks at 0.5) and resumed: the re-run
      step is the killed run's bit for bit, the engine checks the transition across the two layouts,
      and every step's loss and mask value equal the one-process run's (the layout tests' tolerance)."""
    init = str(initial_checkpoint(tmp_path / "init", "model.tie_embeddings=false"))
    one = write_staged_run(
        tmp_path / "one.yaml", tmp_path / "one", *FLM, "stages.0.parallel={}", "stages.1.parallel={}"
    )
    bad = flm("train", str(one), "--init-from", init, check=False, env={"FLM_FAULT_AT": "f/g:1"})
    assert bad.returncode != 0 and "killing f/g after step 1" in bad.stderr, bad.stderr[-2000:]
    assert (tmp_path / "one" / "stage1-g" / "grown").is_dir()
    assert not list((tmp_path / "one" / "stage1-g").glob("checkpoints/step_*"))
    ref_path = tmp_path / "one" / "stage0-s" / "transition_reference.json"
    reference = json.loads(ref_path.read_text())
    ref_path.write_text(json.dumps(dict(reference, loss=reference["loss"] * 1.001)))
    bad = flm("train", str(one), "--resume", check=False)
    assert bad.returncode == 1 and "relative difference 9.99e-04 > 1e-05" in bad.stderr, bad.stderr[-2000:]
    ref_path.write_text(json.dumps(reference))
    flm("train", str(one), "--resume")
    growth = json.loads((tmp_path / "one" / "stage1-g" / "growth.json").read_text())
    assert growth["preserved"] and growth["exact"] and growth["verify"]["max_abs_dlogit"] <= 1e-10
    ref = last_by_step(tmp_path / "one" / "stage1-g")
    assert [ref[s]["mask_value"] for s in range(1, 7)] == [0.0, 0.25, 0.5, 0.75, None, None]

    run = write_staged_run(tmp_path / "eight.yaml", tmp_path / "eight", *FLM)
    ckpts = f"checkpoint.dir={tmp_path / 'ckpts'}"
    killed = flm("train", str(run), ckpts, "--init-from", init, nproc=8, check=False, env={"FLM_FAULT_AT": "f/g:3"})
    assert killed.returncode != 0 and "killing f/g after step 3" in killed.stderr, killed.stderr[-2000:]
    before = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "eight" / "stage1-g")}
    assert sorted(before) == [1, 2, 3]
    flm("train", str(run), ckpts, "--resume", nproc=8)
    assert (tmp_path / "ckpts" / "stage0-s" / "step_0000004").is_dir()
    assert (tmp_path / "ckpts" / "stage1-g" / "step_0000006").is_dir()
    assert not list((tmp_path / "eight").glob("stage*/checkpoints"))

    check = json.loads((tmp_path / "eight" / "stage1-g" / "transition_check.json").read_text())
    assert check["preserved"] and check["rel_dloss"] <= 1e-5, check
    assert (check["old_layout"], check["new_layout"]) == ("TP2 PP1 DP4 SP", "TP2 PP2 DP2 SP")
    growth = json.loads((tmp_path / "eight" / "stage1-g" / "growth.json").read_text())
    assert growth["exact"] and growth["preserved"]
    for stage, steps in (("stage0-s", 4), ("stage1-g", 6)):
        ref, got = last_by_step(tmp_path / "one" / stage), last_by_step(tmp_path / "eight" / stage)
        assert sorted(ref) == sorted(got) == list(range(1, steps + 1)), stage
        assert got[1]["loss"] == pytest.approx(ref[1]["loss"], rel=1e-5), f"{stage}: forward loss on the same weights"
        for step in range(2, steps + 1):
            assert got[step]["loss"] == pytest.approx(ref[step]["loss"], rel=1e-4), f"{stage} step {step}"
            assert got[step]["mask_value"] == ref[step]["mask_value"]
    # the resume re-ran step 3 from the step-2 checkpoint: what the killed run computed, bit for bit
    assert last_by_step(tmp_path / "eight" / "stage1-g")[3]["loss"] == before[3]


@pytest.mark.parametrize(
    "override, key, hint",
    [
        ("stages.1.model.hidden_size=32", "stages[1].growth.new.hidden", "never shrinks"),
        ("stages.1.tokens=0", "stages[1].tokens", "must be > 0"),
        ("stages.1.parallel.tp=3", "stages[1].model.num_attention_heads", "not divisible by parallel.tp=3"),
        ("stages.0.growth={ramp: {steps: 3}}", "stages[0].growth", "first stage"),
        ("stages.1.growth=null", "stages[1].growth", "needs a growth section"),
        ("stages.1.growth.operators={depth: stack}", "stages[1].growth.operators.depth", "exact: false"),
        # one growth vocabulary: a plan's option types, so no operator is silently swapped for another
        ("stages.1.growth.operators={depth: clone}", "stages[1].growth.operators.depth", "allowed values"),
        ("stages.1.growth.default_operator=clone", "stages[1].growth.operators.depth", "no depth counterpart"),
        ("stages.1.growth.ramp_steps=3", "stages[1].growth.ramp_steps", "unknown key"),
        # every LR option honoured or refused: none is silently overwritten by the run-level schedule
        ("stages.1.train.warmup_steps=3", "stages[1].train.warmup_steps", "warms up once"),
        ("stages.1.train.lr_decay_steps=30", "stages[1].train.lr_decay_steps", "decays to min_lr"),
        ("train.lr_decay_steps=30", "train.lr_decay_steps", "decays to min_lr"),
        ("lr_schedule={kind: per_stage, rewarmup_steps: 5}", "lr_schedule.rewarmup_steps", "run-level"),
        ("stages.1.start_lr=1.0e-3", "stages[1].start_lr", "both set"),
        ("stages.0.start_lr=1.0e-3", "stages[0].start_lr", "first stage"),
        # a stage's data is its blend; the order seed, split, tokenizer, document resets are the run's
        ("stages.1.data={seed: 4}", "stages[1].data.seed", "one for the whole run"),
        ("stages.1.data={reset_at_eos: true}", "stages[1].data.reset_at_eos", "one for the whole run"),
        ("stages.1.data={datasets: [{path: a}]}", "stages[1].data", "not mock"),
        ("stages.1.data={kind: mock}", "stages[1].data.kind", "kind default or prepared"),
    ],
)
def test_invalid_stage_lists_name_the_key(tmp_path, override, key, hint):
    with pytest.raises(ConfigError) as info:
        load_run(write_run(tmp_path, "x"), [override])
    assert info.value.key == key, str(info.value)
    assert hint in str(info.value)


def test_start_lr_sets_the_grown_stages_peak_or_is_refused(tmp_path):
    run = load_run(write_run(tmp_path, "x"), ["stages.1.train={}", "stages.1.start_lr=1.0e-3"])
    train = run.stages[1].config.train
    from training.config.lr import lr_at

    step = train.schedule_offset_steps + 1
    got = lr_at(
        step, peak=train.lr, min_lr=train.min_lr, warmup=train.warmup_steps, decay=train.lr_decay_steps, style="cosine"
    )
    assert got == pytest.approx(1.0e-3) and train.lr > 1.0e-3
    with pytest.raises(ConfigError) as info:
        load_run(write_run(tmp_path, "x"), ["stages.1.train={}", "stages.1.start_lr=1.0e-6"])
    assert info.value.key == "stages[1].start_lr" and "below min_lr" in str(info.value)


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


def test_each_stage_has_its_own_directories_and_checkpoint_root(tmp_path):
    """Derived once by load_run: a stage's output and checkpoint directories are its own, also when the
    run sets checkpoint.dir (each stage under <checkpoint.dir>/stage<i>-<name>)."""
    run = load_run(write_run(tmp_path, "x"))
    assert [s.dir for s in run.stages] == [tmp_path / "x" / "stage0-s", tmp_path / "x" / "stage1-g"]
    assert [s.checkpoint_root for s in run.stages] == [s.dir / "checkpoints" for s in run.stages]
    run = load_run(write_run(tmp_path, "x"), [f"checkpoint.dir={tmp_path / 'c'}"])
    assert [s.checkpoint_root for s in run.stages] == [tmp_path / "c" / "stage0-s", tmp_path / "c" / "stage1-g"]
    assert [s.grown_dir for s in run.stages] == [s.dir / "grown" for s in run.stages]
    assert run.stages[0].growth is None and run.stages[1].growth.new.layers == 4
    assert run.stages[1].config.model.num_layers == 4 and run.stages[1].config.train.steps == 8
    single = load_run(REPO / "configs" / "runs" / "tiny.yaml")
    assert not single.staged and [s.config for s in single.stages] == [single.config]


@pytest.mark.parametrize("policy, warmup", [("inherit", 1), ("rewind", 0), ("restart", 2)])
def test_lr_policy_at_growth_sets_the_stage_schedule(tmp_path, policy, warmup):
    overrides = ["lr_schedule.kind=per_stage", "stages.1.train.warmup_steps=1", f"stages.1.growth.lr_policy={policy}"]
    run = load_run(write_run(tmp_path, "x"), overrides)
    stage = run.stages[1].config
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


def test_a_stage_trains_on_its_own_blend_over_the_runs_data_section(tmp_path):
    run = load_run(
        write_run(tmp_path, "x"),
        [
            "data={kind: default, seed: 9, validation_fraction: 0.02}",
            "stages.1.data={kind: prepared, datasets: [{path: a, weight: 3}, {path: b}]}",
        ],
    )
    first, second = (s.config.data for s in run.stages)
    assert (first.kind, first.datasets) == ("default", [])
    assert second.kind == "prepared" and [(d.path, d.weight) for d in second.datasets] == [("a", 3.0), ("b", 1.0)]
    assert (second.seed, second.validation_fraction) == (9, 0.02)  # the rest is the run's
