"""The DeepSpeed ZeRO engine (``engine: deepspeed``) against the megatron engine, on real gloo
processes: same losses, exact resume across ZeRO stages, growth of its checkpoints, start from grown
(logical) and megatron checkpoints with moments and step carried, staged runs killed and resumed.

Tolerances (fp32 everywhere): the engines compute the same model on the same samples with the same
AdamW/LR/clipping, but reduce gradients in different orders (megatron's DDP buffer vs ZeRO's
partitions/buckets), so results agree to float32 rounding: the step-1 loss is a forward on identical
weights (rel 1e-5, as the layout tests), later steps accumulate rounding through 5 Adam updates
(rel 1e-4, as the layout tests; observed ~1e-7). Resumes and growth are checked at rel 1e-6.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers import REPO, flm, losses, read_metrics

TINY = str(REPO / "configs" / "runs" / "tiny.yaml")
COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "train.eval_interval=1000"]
WORKER = REPO / "tests" / "training" / "engine" / "workers" / "ds_jobs.py"
PLAN = """
new: {layers: 4, hidden: 128, ffn: 512, heads: 8, query_groups: 8, head_dim: 16, vocab: 512}
operators: {hidden: msg, ffn: msg, heads: msg, depth: msg}
depth: {placement: interleave, init: copy}
ramp: {steps: 2}
"""


def ds_jobs(root, job: str) -> None:
    """Run the worker's ``job`` in 2 gloo processes (torchrun)."""
    from training.local_launch import torchrun_command

    cmd = torchrun_command(2, [])[:-2] + [str(WORKER), str(root), job]  # a script instead of `-m training.cli`
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """megatron DP2 and DeepSpeed ZeRO 1/2/3 DP2 runs of 6 steps (checkpoints at 3 and 6), plus each
    ZeRO stage resumed from another stage's step-3 checkpoint."""
    root = tmp_path_factory.mktemp("ds")
    flm(
        "train",
        TINY,
        "train.steps=6",
        f"output_dir={root / 'megatron'}",
        "checkpoint.save_interval=3",
        *COMMON,
        nproc=2,
    )
    ds_jobs(root, "train")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("zero", [1, 2, 3])
def test_zero_stage_matches_megatron_dp2(runs, zero):
    ref, got = read_metrics(runs / "megatron"), read_metrics(runs / f"zero{zero}")
    assert [r["step"] for r in got] == list(range(1, 7))
    assert got[0]["loss"] == pytest.approx(ref[0]["loss"], rel=1e-5), "forward loss on the same weights"
    for r, g in zip(ref[1:], got[1:]):
        assert g["loss"] == pytest.approx(r["loss"], rel=1e-4), f"step {g['step']}"
    for r, g in zip(ref, got):
        assert g["lr"] == pytest.approx(r["lr"], rel=1e-12), "the same LR schedule"
        assert g["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-4), "the same gradients (before clipping)"
        assert g["consumed_samples"] == r["consumed_samples"] and g["skipped"] is False
        assert g["tokens_per_s"] > 0
    assert got[-1]["val_loss"] == pytest.approx(ref[-1]["val_loss"], rel=1e-4)
    meta = json.loads((runs / f"zero{zero}" / "checkpoints" / "step_0000006" / "flm_checkpoint.json").read_text())
    assert meta["engine"] == "deepspeed" and meta["zero_stage"] == zero and meta["adam_step"] == 6
    assert meta["consumed_samples"] == 48 and meta["layout"] == {"tp": 1, "pp": 1, "dp": 2}


@pytest.mark.slow
@pytest.mark.parametrize("zero", [1, 2, 3])
def test_resume_under_another_zero_stage_continues_the_same_losses(runs, zero):
    """Stage ``zero`` resumed from stage ``zero % 3 + 1``'s step-3 checkpoint (weights, moments,
    Adam step, LR schedule, data position) continues as the uninterrupted run of stage ``zero``."""
    ref, got = losses(runs / f"zero{zero}"), losses(runs / f"resumed{zero}")
    assert sorted(got) == [4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(ref[step], rel=1e-6), f"step {step}"


@pytest.fixture(scope="module")
def grown(runs):
    """`flm grow --verify` (MSG) of the ZeRO-2 step-3 checkpoint, then ZeRO 1/2/3 runs started from it."""
    plan = runs / "plan.yaml"
    plan.write_text(PLAN)
    out = flm(
        "grow",
        str(runs / "zero2" / "checkpoints" / "step_0000003"),
        str(runs / "grown"),
        "--plan",
        str(plan),
        "--verify",
    )
    assert "[preserved]" in out.stdout
    ds_jobs(runs, "grown")
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("zero", [1, 2, 3])
def test_grown_deepspeed_checkpoint_starts_deepspeed_runs_exactly(grown, zero):
    small = {r["step"]: r for r in read_metrics(grown / "zero2")}
    big = {r["step"]: r for r in read_metrics(grown / f"big{zero}")}
    # step 1 of the grown run trains on the batch of the small run's step 4, with the grown step-3 weights
    assert big[1]["loss"] == pytest.approx(small[4]["loss"], rel=1e-6), "function preserved by growth"
    assert [big[s]["mask_value"] for s in (1, 2, 3)] == [0.0, 0.5, None]
    assert big[1]["consumed_samples"] == 32


@pytest.mark.slow
def test_grown_moments_and_step_are_carried_into_every_zero_stage(grown):
    """Saved right after --init-from, each ZeRO stage's checkpoint holds exactly the grown weights,
    Adam moments and step (logical -> DeepSpeed -> logical is the identity)."""
    import torch

    from training.checkpoint.logical import read_logical

    params, moments = read_logical(grown / "grown")
    adam_step = json.loads((grown / "grown" / "flm_checkpoint.json").read_text())["adam_step"]
    assert adam_step == 3 and any(v.abs().sum() > 0 for v in moments["exp_avg"].values())
    for zero in (1, 2, 3):
        ckpt = grown / f"init{zero}" / "step_0000000"
        got_params, got_moments = read_logical(ckpt)
        meta = json.loads((ckpt / "flm_checkpoint.json").read_text())
        assert meta["adam_step"] == adam_step and meta["growth_masks"]["steps_done"] == 0
        assert sorted(got_params) == sorted(params)
        for key, value in params.items():
            assert torch.equal(got_params[key], value), (zero, key)
        for m in ("exp_avg", "exp_avg_sq"):
            assert sorted(got_moments[m]) == sorted(moments[m])
            for key, value in moments[m].items():
                assert torch.equal(got_moments[m][key], value), (zero, m, key)


@pytest.mark.slow
def test_checkpoints_cross_engines_with_init_from_and_refuse_resume(grown):
    """Each engine starts from the other's step-3 checkpoint (same step-1 loss, both trained alike),
    and resuming the other engine's checkpoint is refused with the way out."""
    ds_from_megatron = losses(grown / "from_megatron")[1]
    out = grown / "megatron_from_ds"
    flm(
        "train",
        TINY,
        "train.steps=1",
        f"output_dir={out}",
        "--init-from",
        str(grown / "zero1" / "checkpoints" / "step_0000003"),
        *COMMON,
    )
    assert losses(out)[1] == pytest.approx(ds_from_megatron, rel=1e-5)
    bad = flm(
        "train",
        TINY,
        "train.steps=6",
        f"output_dir={grown / 'x'}",
        "--resume",
        str(grown / "zero1" / "checkpoints" / "step_0000003"),
        *COMMON,
        check=False,
    )
    assert bad.returncode == 2
    assert "saved by engine: deepspeed" in bad.stderr and "--init-from" in bad.stderr


# the staged run of test_stages.py (2 stages, MSG growth), both stages under DeepSpeed ZeRO-3 on DP2
STAGED = [
    "engine=deepspeed",
    "deepspeed.zero_stage=3",
    "stages.1.parallel.tp=1",
    "stages.0.tokens=2048",
    "stages.1.tokens=2048",
    "stages.1.growth.ramp.steps=3",
]


@pytest.mark.slow
def test_staged_deepspeed_run_grows_and_resumes_inside_the_ramp(tmp_path):
    """Two ZeRO-3 stages: the transition grows stage 0's final DeepSpeed checkpoint (verified exact);
    killed after stage 1's step 3 (latest checkpoint: step 2, masks at 2/3) and resumed, the re-run
    step 3 equals the one the killed run logged."""
    from tests.training.orchestration.test_stages import write_run

    run = write_run(tmp_path, "out")
    bad = flm("train", str(run), *STAGED, nproc=2, check=False, env={"FLM_FAULT_AT": "t/g:3"})
    assert bad.returncode != 0 and "FLM_FAULT_AT" in bad.stderr
    growth = json.loads((tmp_path / "out" / "stage1-g" / "growth.json").read_text())
    assert growth["preserved"] and growth["exact"] and growth["verify"]["max_abs_dlogit"] <= 1e-10
    killed = read_metrics(tmp_path / "out" / "stage1-g")[2]
    assert killed["step"] == 3
    flm("train", str(run), *STAGED, "--resume", nproc=2)
    records = read_metrics(tmp_path / "out" / "stage1-g")
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # the re-done step replaces the killed run's record
    resumed = records[2]
    assert resumed["loss"] == pytest.approx(killed["loss"], rel=1e-6)
    assert resumed["mask_value"] == killed["mask_value"] == pytest.approx(2 / 3)
    assert records[3]["mask_value"] is None
    assert [r["step"] for r in read_metrics(tmp_path / "out" / "stage0-s")] == [1, 2, 3, 4]
    meta = json.loads(
        (tmp_path / "out" / "stage1-g" / "checkpoints" / "step_0000004" / "flm_checkpoint.json").read_text()
    )
    assert meta["engine"] == "deepspeed" and meta["stage"] == 1 and meta["growth_masks"] is None


# ---------------------------------------------------------------- one process, inside the test process


@pytest.fixture
def local_rank(monkeypatch):
    """The DeepSpeed engine sets LOCAL_RANK=0 in a plain single process; keep it out of the test
    process's environment afterwards (the children of later tests inherit it)."""
    monkeypatch.setenv("LOCAL_RANK", "0")


def ds_trainer(tmp_path, overrides):
    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from training.config import load_run_config
    from training.data.source import MockSource
    from training.engine.factory import make_trainer

    cfg = load_run_config(
        TINY,
        [
            "engine=deepspeed",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            f"output_dir={tmp_path}",
            *overrides,
        ],
    )
    src = MockSource(cfg.model.vocab_size, cfg.model.seq_length, seed=7)
    return make_trainer(cfg, train_source=src, valid_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 8))


def test_optimizer_offload_gives_the_same_losses(tmp_path, local_rank):
    runs = {}
    for zero in (2, 3):
        t = ds_trainer(tmp_path / f"o{zero}", [f"deepspeed.zero_stage={zero}", "deepspeed.offload_optimizer=true"])
        runs[zero] = [t.step().loss for _ in range(3)]
    ref = ds_trainer(tmp_path / "ref", ["deepspeed.zero_stage=2"])
    expected = [ref.step().loss for _ in range(3)]
    for zero, got in runs.items():
        assert got == pytest.approx(expected, rel=1e-6), zero


def test_nan_loss_raises_or_skips_under_deepspeed(tmp_path, local_rank):
    import math

    from training.engine.trainer_base import NonFiniteLossError

    bad = ["train.lr=1e30", "train.warmup_steps=0", "train.clip_grad=0"]
    raiser = ds_trainer(tmp_path / "raise", [*bad, "deepspeed.zero_stage=1"])
    with pytest.raises(NonFiniteLossError, match="train.on_nan=skip"):
        for _ in range(5):
            raiser.step()
    skipper = ds_trainer(tmp_path / "skip", [*bad, "train.on_nan=skip", "deepspeed.zero_stage=3"])
    results = [skipper.step() for _ in range(5)]
    nonfinite = [r for r in results if not math.isfinite(r.loss)]
    assert nonfinite and all(r.skipped and r.grad_norm is None for r in nonfinite)
    assert skipper.adam_step == 5 - len(nonfinite) and skipper.step_count == 5


def test_bf16_trains_and_resumes_exactly_from_fp32_master_weights(tmp_path, local_rank):
    overrides = ["train.precision=bf16", "deepspeed.zero_stage=2", "train.lr=1e-2", "train.steps=6"]
    full = ds_trainer(tmp_path / "full", overrides)
    first = [full.step().loss for _ in range(3)]
    saved = full.save()
    rest = [full.step().loss for _ in range(3)]
    assert sum(rest) / 3 < first[0] - 0.3, first + rest
    resumed = ds_trainer(tmp_path / "resumed", overrides)
    resumed.load(saved)
    assert (resumed.step_count, resumed.adam_step, resumed.consumed_samples) == (3, 3, 24)
    assert [resumed.step().loss for _ in range(3)] == rest
