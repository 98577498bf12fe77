"""The planner's checkpoint times (training/plan/ckpt.py): size, save and load + verify of each
stage, the recommended process-group timeout and the warning when the configured one is lower."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO
from training.cli import main
from training.config import load_run_config
from training.orchestration.stage_plans import load_run
from training.plan.ckpt import checkpoint_time, writer_ranks
from training.plan.hardware import GPUS
from training.plan.planner import PlanOptions, plan_run

FLM = REPO / "configs" / "runs" / "flm101b.yaml"
TINY = REPO / "configs" / "runs" / "tiny.yaml"
GB = 1e9


def _plan(overrides=(), **opts):
    return plan_run(load_run(FLM, list(overrides)), PlanOptions(gpu=GPUS["a800"], gpus=192, **opts))


def test_flm101b_checkpoints_sizes_and_times():
    """14 B/param (bf16 weight, fp32 master, Adam m and v): ~1.44 TB for 101B. The DP-rank-0 ranks
    write it (1, 2 and 4 of the 24 nodes: tp2; tp4 x pp2; tp4 x pp4, 4 per node), every node hashes
    1/24 of it; a load reads each rank's TP/PP slice (8 ranks a node) plus its hash share."""
    plan = _plan()
    ckpts = [s.checkpoint for s in plan.stages]
    assert [c.bytes for c in ckpts] == [14 * s.params for s in plan.stages]
    assert ckpts[2].bytes == pytest.approx(1.44e12, rel=0.01)
    assert [c.writer_nodes for c in ckpts] == [1, 2, 4] and [c.nodes for c in ckpts] == [24, 24, 24]
    for c, mp in zip(ckpts, (2, 8, 16)):
        b = c.bytes
        assert c.save_s == pytest.approx(b / (c.writer_nodes * 1 * GB) + b / (24 * 2 * GB))
        assert c.load_s == pytest.approx((8 * b / mp + b / 24) / (2 * GB))
    assert ckpts[2].save_s / 60 == pytest.approx(6.5, abs=0.1)
    # 2 x the longest + 5 min, rounded up to 5 min; signal lead 1.5 x save + 2 min, rounded up to a minute
    assert [c.timeout_minutes for c in ckpts] == [25, 20, 20]
    assert [c.signal_lead_s for c in ckpts] == [480, 720, 720]
    assert not [f for f in plan.findings if "timeout" in f.key]  # 30 min configured: enough


def test_writer_ranks_follow_megatrons_rank_order_and_deepspeed_writes_everywhere():
    run = load_run_config(FLM)
    p = run.stages[2].parallel  # tp4 pp4 dp12: rank = tp_rank + 4 x (dp_rank + 12 x pp_rank)
    assert writer_ranks(p, 12, "megatron") == [0, 1, 2, 3, 48, 49, 50, 51, 96, 97, 98, 99, 144, 145, 146, 147]
    tiny = load_run_config(TINY, ["engine=deepspeed"])
    assert writer_ranks(tiny.parallel, 16, "deepspeed") == list(range(16))
    ds = checkpoint_time(tiny.model, tiny.parallel, 16, precision="bf16", engine="deepspeed", gpus_per_node=8)
    mg = checkpoint_time(tiny.model, tiny.parallel, 16, precision="bf16", engine="megatron", gpus_per_node=8)
    assert (ds.writer_nodes, mg.writer_nodes, ds.nodes) == (2, 1, 2) and ds.write_s == pytest.approx(mg.write_s / 2)
    fp32 = checkpoint_time(tiny.model, tiny.parallel, 16, precision="fp32", engine="megatron", gpus_per_node=8)
    assert fp32.bytes / mg.bytes == pytest.approx(12 / 14)


def test_a_timeout_below_the_recommendation_is_one_warning_naming_the_key():
    plan = _plan(["stages.2.parallel.timeout_minutes=10"])
    (warning,) = [f for f in plan.findings if f.key.endswith("timeout_minutes")]
    assert warning.level == "warning" and warning.key == "stages[2].parallel.timeout_minutes"
    text = str(warning)
    assert "\n" not in text and "10 min is below the 20 min recommended" in text
    assert "set stages.2.parallel.timeout_minutes=20" in text
    # a slower filesystem: the default 30 minutes no longer covers a stage
    slow = _plan(write_gbps=0.25, read_gbps=0.5)
    keys = [f.key for f in slow.findings if f.key.endswith("timeout_minutes")]
    assert keys == [
        "stages[0].parallel.timeout_minutes",
        "stages[1].parallel.timeout_minutes",
        "stages[2].parallel.timeout_minutes",
    ]
    assert all(s.checkpoint.timeout_minutes > 30 for s in slow.stages)


def test_cli_prints_the_checkpoint_table_and_json(capsys):
    assert main(["plan", str(FLM), "stages.0.parallel.timeout_minutes=5"]) == 0
    out = capsys.readouterr().out
    section = out.split("Checkpoints (minutes; 1 GB/s write and 2 GB/s read per node assumed")[1]
    rows = {line.split()[0]: line.split() for line in section.splitlines()[2:5]}
    assert rows["101b"] == ["101b", "1.44", "TB", "4/24", "6.5", "6.5", "20", "30", "720"]
    assert rows["16b"][-3:] == ["25", "5", "480"]
    assert "warning: stages[0].parallel.timeout_minutes: 5 min is below the 25 min recommended" in out
    assert main(["plan", str(FLM), "--json", "--ckpt-write-gbps", "2", "--ckpt-read-gbps", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    c = doc["stages"][2]["checkpoint"]
    assert c["save_s"] == pytest.approx(c["bytes"] / 8e9 + c["bytes"] / 96e9)
    assert (c["recommended_timeout_minutes"], c["timeout_minutes"], c["writer_nodes"]) == (15, 30.0, 4)
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main(["plan", str(FLM), "--ckpt-read-gbps", "0"])
    assert exit_info.value.code == 2
    assert "must be > 0" in capsys.readouterr().err
