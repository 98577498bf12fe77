"""``flm grow`` on real checkpoints: a TP2 checkpoint grown with MSG and trained on under TP2xPP2
(4 gloo processes) computes exactly what the old model did (same loss on the same batch), the
masks ramp and disappear, and the command refuses bad input without leaving anything behind."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, flm, read_metrics
from training.cli import main as flm_main

TINY = str(REPO / "configs" / "runs" / "tiny.yaml")
COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "train.eval_interval=1000"]
PLAN = """
new: {layers: 4, hidden: 128, ffn: 512, heads: 8, query_groups: 8, head_dim: 16, vocab: 512}
operators: {hidden: msg, ffn: msg, heads: msg, depth: msg}
depth: {placement: interleave, init: copy}
ramp: {steps: 3}
tp: 2
"""
GROWN = ["model.num_layers=4", "model.hidden_size=128", "model.ffn_hidden_size=512", "model.num_attention_heads=8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, layout_run):
    """The TP2 layout run of the layout tests (tests/conftest.py ``layout_run``: 8 steps of tiny.yaml
    on 2 processes, checkpoints at 3, 6, 8) is the checkpoint grown here: its step-3 checkpoint."""
    root = tmp_path_factory.mktemp("grow")
    plan = root / "plan.yaml"
    plan.write_text(PLAN)
    return root, layout_run("tp2") / "checkpoints" / "step_0000003", plan


@pytest.mark.slow
def test_grown_tp2_checkpoint_is_exact_under_tp2xpp2_and_masks_ramp_away(trained, capsys):
    """``flm grow`` through the CLI's main in this process (the growth runs no process group: a fresh
    interpreter would only add its start-up), the grown model trained under TP2xPP2 by 4 processes."""
    root, src, plan = trained
    assert flm_main(["grow", str(src), str(root / "grown"), "--plan", str(plan), "--verify"]) == 0
    assert "[preserved]" in capsys.readouterr().out
    meta = json.loads((root / "grown" / "flm_checkpoint.json").read_text())
    assert meta["growth"]["masks"]["ramp_steps"] == 3 and meta["has_moments"]
    flm(
        "train",
        TINY,
        "train.steps=5",
        *GROWN,
        f"output_dir={root / 'big'}",
        "--init-from",
        str(root / "grown"),
        "parallel.tp=2",
        "parallel.pp=2",
        *COMMON,
        nproc=4,
    )
    small = {r["step"]: r for r in read_metrics(src.parent.parent)}
    big = {r["step"]: r for r in read_metrics(root / "big")}
    # step 1 of the grown run sees the batch of step 4 of the small run, on the grown step-3 weights
    assert big[1]["loss"] == pytest.approx(small[4]["loss"], rel=1e-6)
    assert [big[s]["mask_value"] for s in range(1, 6)] == [0.0, 1 / 3, 2 / 3, None, None]
    losses = [big[s]["loss"] for s in range(1, 6)]
    assert max(losses[1:]) < losses[0] + 0.01 * losses[0], f"loss bump after growth: {losses}"
    ckpt = json.loads((root / "big" / "checkpoints" / "step_0000005" / "flm_checkpoint.json").read_text())
    assert ckpt["growth_masks"] is None, "masks are gone from the checkpoint after the ramp"


def test_grow_refuses_bad_input_and_leaves_nothing(trained, tmp_path, capsys):
    """Through the CLI's main (its one error handler) in this process: refusals come before torch
    work, so a fresh interpreter per case would only add its start-up."""
    root, src, plan = trained

    def grow(*args: str) -> tuple[int, str]:
        code = flm_main(["grow", *args])
        return code, capsys.readouterr().err

    existing = tmp_path / "exists"
    existing.mkdir()
    code, err = grow(str(src), str(existing), "--plan", str(plan))
    assert code == 2 and "refusing to overwrite" in err
    shrink = tmp_path / "shrink.yaml"
    shrink.write_text(PLAN.replace("hidden: 128", "hidden: 32"))
    code, err = grow(str(src), str(tmp_path / "out"), "--plan", str(shrink))
    assert code == 2 and "new.hidden" in err and "shrink" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    code, err = grow(str(tmp_path / "nowhere"), str(tmp_path / "out"), "--plan", str(plan))
    assert code == 2 and "does not exist" in err
    stacked = tmp_path / "stack.yaml"
    stacked.write_text(PLAN.replace("depth: msg", "depth: stack").replace("placement: interleave", "placement: stack"))
    code, err = grow(str(src), str(tmp_path / "out"), "--plan", str(stacked))
    assert code == 2 and "exact: false" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
