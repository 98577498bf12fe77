"""``flm grow`` streams: the grown checkpoint equals the in-memory growth bit for bit, a checkpoint
stored layer by layer is read a layer at a time, the float64 check reads what was written, and a
failed check or a failing tensor leaves nothing at the destination."""

from __future__ import annotations

import json
import os

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from growth import grow_moment, grow_state
from growth.errors import GrowthError
from tests.growth.helpers import grown_plan, make_cfg, random_state
from training.checkpoint.dcp_io import TensorReader
from training.checkpoint.logical import read_logical, write_logical
from training.config import RunConfig
from training.config_base import to_dict
from training.engine.parallel import init_process_group
from training.orchestration.grow import GrowthVerificationError, grow_checkpoint

CASES = [
    (
        "msg-all-interleave-copy",
        {"hidden": "msg", "ffn": "msg", "heads": "msg", "depth": "msg"},
        dict(
            hidden_size=24,
            ffn_hidden_size=32,
            num_layers=5,
            num_attention_heads=6,
            num_query_groups=3,
            plan={"depth": {"placement": "interleave", "init": "copy"}},
        ),
    ),
    (
        "msg-depth-stack-fresh",
        {"depth": "msg"},
        dict(num_layers=4, plan={"depth": {"placement": "stack", "init": "fresh"}}),
    ),
    (
        "zero-hidden-ffn-depth",
        {"hidden": "zero", "ffn": "zero", "depth": "zero"},
        dict(hidden_size=24, ffn_hidden_size=32, num_layers=3),
    ),
    (
        "clone-noise",
        {"hidden": "clone", "ffn": "clone", "heads": "clone"},
        dict(
            hidden_size=32,
            ffn_hidden_size=48,
            num_attention_heads=8,
            num_query_groups=4,
            plan={"clone_noise": 0.01, "exact": False},
        ),
    ),
]


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    init_process_group()


def _source(tmp_path, cfg, dtype=torch.float32):
    state = random_state(cfg, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    moments = {
        m: {k: torch.rand(v.shape, generator=gen, dtype=torch.float64).to(dtype) for k, v in state.items()}
        for m in ("exp_avg", "exp_avg_sq")
    }
    meta = {"config": to_dict(RunConfig(model=cfg)), "step": 7, "consumed_samples": 56, "adam_step": 7}
    return write_logical(tmp_path / "src", state, meta, moments), state, moments


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_streamed_growth_equals_in_memory_growth(tmp_path, case):
    _, operators, changes = case
    cfg = make_cfg({"normalization": "RMSNorm", "activation": "swiglu", "num_query_groups": 2})
    src, state, moments = _source(tmp_path, cfg)
    plan = grown_plan(cfg, operators, **dict(changes))
    report = grow_checkpoint(src, tmp_path / "dst", plan)
    expected = grow_state(plan, cfg, state)
    params, grown_moments = read_logical(tmp_path / "dst")
    assert set(params) == set(expected.state)
    for key, value in expected.state.items():
        assert torch.equal(params[key], value), key
    from growth import prepare_growth

    g = prepare_growth(plan, cfg)
    for m, order in (("exp_avg", 1), ("exp_avg_sq", 2)):
        for key, value in moments[m].items():
            assert torch.equal(grown_moments[m][key], grow_moment(g, key, value, order)), f"{m} {key}"
    meta = json.loads((tmp_path / "dst" / "flm_checkpoint.json").read_text())
    assert meta["has_moments"] and meta["adam_step"] == 7 and meta["consumed_samples"] == 56
    assert report.verify is not None and meta["growth"]["verify"]["max_abs_dlogit"] == report.verify.max_abs_dlogit
    if report.exact:
        assert report.preserved, report.summary()
    assert report.new_params == sum(v.numel() for v in expected.state.values())


def test_layer_chunked_sources_are_read_one_layer_at_a_time(tmp_path, monkeypatch):
    cfg = make_cfg()
    src, _, _ = _source(tmp_path, cfg)
    plan = grown_plan(cfg, {"hidden": "msg", "depth": "msg"}, hidden_size=24, num_layers=4)
    reads = []
    original = TensorReader.read

    def spy(self, key, start=0, length=None):
        if self.path == src:
            reads.append((key, length if length is not None else self.shape(key)[0]))
        return original(self, key, start, length)

    monkeypatch.setattr(TensorReader, "read", spy)
    grow_checkpoint(src, tmp_path / "dst", plan)
    layered = [(k, n) for k, n in reads if ".layers." in k]
    assert layered and all(n == 1 for _, n in layered), "a per-layer tensor is never read whole"


def test_whole_tensor_sources_from_older_versions_still_grow(tmp_path):
    """Logical checkpoints written before streaming store each stacked tensor as one chunk."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    cfg = make_cfg()
    state = random_state(cfg, dtype=torch.float32)
    old = tmp_path / "old"
    old.mkdir()
    dist_checkpointing.save({k: ShardedTensor.from_rank_offsets(k, v) for k, v in state.items()}, str(old))
    (old / "flm_checkpoint.json").write_text(
        json.dumps({"config": to_dict(RunConfig(model=cfg)), "step": 3, "format_version": 1, "has_moments": False})
    )
    assert TensorReader(old).stored_rows("decoder.layers.mlp.linear_fc1.weight") == cfg.num_layers
    plan = grown_plan(cfg, {"ffn": "msg", "depth": "msg"}, ffn_hidden_size=32, num_layers=4)
    report = grow_checkpoint(old, tmp_path / "dst", plan)
    assert report.preserved
    params, moments = read_logical(tmp_path / "dst")
    expected = grow_state(plan, cfg, state).state
    assert all(torch.equal(params[k], v) for k, v in expected.items()) and not moments["exp_avg"]


def test_a_failed_check_leaves_nothing(tmp_path, monkeypatch):
    import training.orchestration.grow as gc

    cfg = make_cfg()
    src, _, _ = _source(tmp_path, cfg)
    plan = grown_plan(cfg, {"ffn": "msg"}, ffn_hidden_size=32)
    real = gc.grow_layer

    def broken(g, key, j, old, **kw):  # a "bug" in an operator: one weight matrix off
        out = real(g, key, j, old, **kw)
        return out * 1.01 if key.endswith("linear_fc2.weight") else out

    monkeypatch.setattr(gc, "grow_layer", broken)
    with pytest.raises(GrowthVerificationError, match="does not compute what the old one did") as info:
        grow_checkpoint(src, tmp_path / "dst", plan)
    assert info.value.report.max_abs_dlogit > 1e-4
    assert sorted(os.listdir(tmp_path)) == ["src"], "no destination, no .partial"
    # without the check the same bug goes through: the check is what caught it
    grow_checkpoint(src, tmp_path / "unchecked", plan, run_verify=False)
    assert (tmp_path / "unchecked" / "flm_checkpoint.json").is_file()


def test_a_source_that_does_not_fit_the_plan_is_refused_before_writing(tmp_path):
    cfg = make_cfg()
    src, _, _ = _source(tmp_path, cfg)
    other = make_cfg(ffn_hidden_size=40)
    plan = grown_plan(other, {"ffn": "msg"}, ffn_hidden_size=48)
    meta = json.loads((src / "flm_checkpoint.json").read_text())
    meta["config"]["model"]["ffn_hidden_size"] = 40  # the metadata lies about the stored shapes
    (src / "flm_checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(GrowthError, match="linear_fc1.weight has shape"):
        grow_checkpoint(src, tmp_path / "dst", plan)
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst.partial").exists()


def test_inexact_plans_are_checked_and_reported_not_refused(tmp_path):
    cfg = make_cfg()
    src, _, _ = _source(tmp_path, cfg)
    plan = grown_plan(cfg, {"depth": "stack"}, num_layers=4, plan={"exact": False, "depth": {"placement": "stack"}})
    report = grow_checkpoint(src, tmp_path / "dst", plan)
    assert not report.exact and report.preserved is False and "NOT function-preserving" in report.summary()
    assert (tmp_path / "dst" / "flm_checkpoint.json").is_file()
