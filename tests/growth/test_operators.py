"""Operator mechanics: streaming per tensor, layer placement, labelling of inexact operators, errors."""

from __future__ import annotations

import math

import pytest
import torch

from growth import GrowthError, grow_state, grow_tensor, prepare_growth, verify
from growth import roles as R
from tests.growth.helpers import MUP, VARIANTS, grown_plan, make_cfg, random_state, tokens

ALL = {"hidden": "msg", "ffn": "clone", "heads": "zero", "depth": "msg"}


def _all_plan(cfg, **options):
    return grown_plan(
        cfg,
        ALL,
        hidden_size=24,
        ffn_hidden_size=48,
        num_attention_heads=6,
        num_query_groups=6,
        num_layers=4,
        plan=options,
    )


def test_grow_tensor_streams_in_any_order_and_is_pure():
    cfg = make_cfg(tie_embeddings=False)
    plan = _all_plan(cfg, seed=11)
    state = random_state(cfg)
    before = {k: v.clone() for k, v in state.items()}
    whole = grow_state(plan, cfg, state).state
    g = prepare_growth(plan, cfg)
    for key in reversed(list(state)):
        assert torch.equal(grow_tensor(g, key, state[key]), whole[key]), key
    for key in state:
        assert torch.equal(state[key], before[key])
    other = grow_state(_all_plan(cfg, seed=12), cfg, state).state
    assert not torch.equal(other[R.QKV_WEIGHT], whole[R.QKV_WEIGHT])  # new entries depend on the seed
    assert torch.equal(other[R.QKV_WEIGHT][:2, :48, :16], whole[R.QKV_WEIGHT][:2, :48, :16])  # old ones do not


@pytest.mark.parametrize("placement,sources", [("stack", [0, 1, 0, 1, 0]), ("interleave", [0, 0, 1, 1, 1])])
def test_depth_copies_are_copies_of_the_grown_old_layers(placement, sources):
    cfg = make_cfg()
    plan = grown_plan(
        cfg,
        {"hidden": "msg", "depth": "msg"},
        hidden_size=24,
        num_layers=5,
        plan={"depth": {"placement": placement, "init": "copy"}},
    )
    g = prepare_growth(plan, cfg)
    assert [s.source for s in g.layers] == sources
    w = grow_tensor(g, R.FC1_WEIGHT, random_state(cfg)[R.FC1_WEIGHT])
    for j, src in enumerate(sources):
        assert torch.equal(w[j], w[sources.index(src)])
    assert g.masks.new_layers == [j for j in range(5) if j != sources.index(sources[j])]


def test_fresh_and_zero_layers():
    cfg = make_cfg()
    state = random_state(cfg)
    fresh = grow_state(grown_plan(cfg, {"depth": "msg"}, num_layers=3, plan={"depth": {"init": "fresh"}}), cfg, state)
    assert not torch.equal(fresh.state[R.FC1_WEIGHT][2], state[R.FC1_WEIGHT][0])
    assert fresh.state[R.FC1_WEIGHT][2].std() == pytest.approx(cfg.init_std, rel=0.3)
    assert torch.equal(fresh.state[R.NORM1_WEIGHT][2], torch.ones(16, dtype=torch.float64))
    zero = grow_state(grown_plan(cfg, {"depth": "zero"}, num_layers=3), cfg, state)
    for key in (R.PROJ_WEIGHT, R.PROJ_BIAS, R.FC2_WEIGHT, R.FC2_BIAS):
        assert (zero.state[key][2] == 0).all()
    assert torch.equal(zero.state[R.FC1_WEIGHT][2], state[R.FC1_WEIGHT][0])  # LLaMA-Pro: copy, outputs zeroed
    assert zero.masks is None


def test_new_entries_under_mup_get_the_grown_widths_init():
    """μP: new hidden-matrix entries ~ N(0, init_std / sqrt(m_new)) (m_new = 64 / 8 = 8), new
    embedding / readout entries ~ N(0, init_std): what a μP model of the new width is drawn with."""
    cfg = make_cfg(VARIANTS[3], mup=MUP, init_std=0.05)
    plan = grown_plan(
        cfg, {"hidden": "msg", "depth": "msg"}, hidden_size=64, num_layers=3, plan={"depth": {"init": "fresh"}}
    )
    grown = grow_state(plan, cfg, random_state(cfg)).state
    hidden_std = 0.05 / 8**0.5
    for key in (R.QKV_WEIGHT, R.PROJ_WEIGHT, R.FC1_WEIGHT, R.FC2_WEIGHT):
        assert grown[key][2].std() == pytest.approx(hidden_std, rel=0.15), key  # the fresh layer
    assert grown[R.FC1_WEIGHT][0][:, 16:].std() == pytest.approx(hidden_std, rel=0.15)  # new input columns
    assert grown[R.EMBEDDING][:50, 16:].std() == pytest.approx(0.05, rel=0.15)
    assert grown[R.OUTPUT][:50, 16:].std() == pytest.approx(0.05, rel=0.15)


def test_stack_repeats_the_stack_and_is_labelled_inexact():
    cfg = make_cfg()
    state = random_state(cfg)
    plan = grown_plan(cfg, {"depth": "stack"}, num_layers=6, plan={"exact": False})
    res = grow_state(plan, cfg, state)
    assert not res.exact and res.masks is None
    assert torch.equal(res.state[R.QKV_WEIGHT], state[R.QKV_WEIGHT].repeat(3, 1, 1))
    rep = verify(cfg, state, res.new_cfg, res.state, None, tokens(cfg))
    assert rep.max_abs_dlogit > 1e-3  # really not function-preserving (the label is honest)
    inter = grow_state(
        grown_plan(cfg, {"depth": "stack"}, num_layers=4, plan={"exact": False, "depth": {"placement": "interleave"}}),
        cfg,
        state,
    )
    assert torch.equal(inter.state[R.QKV_WEIGHT], state[R.QKV_WEIGHT].repeat_interleave(2, 0))


def test_clone_noise_only_touches_copies_and_is_labelled_inexact():
    cfg = make_cfg()
    state = random_state(cfg)
    ops = {"hidden": "clone", "ffn": "clone"}
    clean = grow_state(grown_plan(cfg, ops, hidden_size=32, ffn_hidden_size=48), cfg, state)
    noisy = grow_state(
        grown_plan(cfg, ops, hidden_size=32, ffn_hidden_size=48, plan={"clone_noise": 0.01, "exact": False}), cfg, state
    )
    assert clean.exact and not noisy.exact
    a, b = clean.state[R.FC1_WEIGHT], noisy.state[R.FC1_WEIGHT]
    assert torch.equal(a[:, :24, :16], b[:, :24, :16])  # the first copy is untouched
    assert 0 < (a - b).abs().max() < 0.1
    assert torch.equal(clean.state[R.FC1_BIAS], noisy.state[R.FC1_BIAS])  # biases and norms are not noised
    assert verify(cfg, state, noisy.new_cfg, noisy.state, None, tokens(cfg)).max_abs_dlogit > 1e-6


def test_opt_in_inexact_width_operators_really_change_the_function():
    """What the validation refuses (unless exact: false) is indeed not exact."""
    state_ln = random_state(make_cfg())
    cfg = make_cfg()
    res = grow_state(grown_plan(cfg, {"hidden": "zero"}, hidden_size=24, plan={"exact": False}), cfg, state_ln)
    assert not res.exact
    assert verify(cfg, state_ln, res.new_cfg, res.state, None, tokens(cfg)).max_abs_dlogit > 1e-4


def test_msg_heads_joining_old_groups_are_exact():
    """The head mask scales a new head's output too, so heads added inside old groups are exact."""
    cfg = make_cfg(num_query_groups=2)
    state = random_state(cfg)
    res = grow_state(grown_plan(cfg, {"heads": "msg"}, num_attention_heads=6, num_query_groups=2), cfg, state)
    assert res.exact
    assert verify(cfg, state, res.new_cfg, res.state, res.masks, tokens(cfg)).max_abs_dlogit < 1e-5


def test_zero_hidden_rmsnorm_rescales_gains_and_eps():
    cfg = make_cfg(normalization="RMSNorm")
    state = random_state(cfg)
    res = grow_state(grown_plan(cfg, {"hidden": "zero"}, hidden_size=64), cfg, state)
    assert res.new_cfg.norm_eps == pytest.approx(cfg.norm_eps / 4)
    gain = res.state[R.FINAL_NORM_WEIGHT]
    torch.testing.assert_close(gain[:16], state[R.FINAL_NORM_WEIGHT] * 0.5, rtol=0, atol=1e-15)
    assert (gain[16:] == 0.5).all()
    assert (res.state[R.EMBEDDING][:, 16:] == 0).all() and (res.state[R.FC2_WEIGHT][:, 16:] == 0).all()
    assert (res.state[R.QKV_WEIGHT][:, :, 16:] != 0).all()  # reading columns are random (they can learn)


def test_clone_divides_the_output_multiplier():
    cfg = make_cfg()
    res = grow_state(grown_plan(cfg, {"hidden": "clone"}, hidden_size=48), cfg, random_state(cfg))
    assert res.new_cfg.output_multiplier == pytest.approx(cfg.output_multiplier / 3)
    assert res.new_cfg.kv_channels == cfg.head_dim and res.new_cfg.head_dim == cfg.head_dim


def test_vocab_padding_grows_with_zero_rows_and_dtype_is_kept():
    cfg = make_cfg(tie_embeddings=False)
    state = {k: v.to(torch.bfloat16) for k, v in random_state(cfg).items()}
    res = grow_state(grown_plan(cfg, {"ffn": "msg"}, tp=4, ffn_hidden_size=32), cfg, state)
    emb = res.state[R.EMBEDDING]
    assert emb.shape == (64, 16) and emb.dtype == torch.bfloat16
    assert torch.equal(emb[:56], state[R.EMBEDDING]) and (emb[56:] == 0).all()
    assert all(t.dtype == torch.bfloat16 for t in res.state.values())


def test_data_errors_are_clear():
    cfg = make_cfg()
    state = random_state(cfg)
    plan = grown_plan(cfg, {"ffn": "msg"}, ffn_hidden_size=32)
    g = prepare_growth(plan, cfg)
    with pytest.raises(GrowthError, match="unknown tensor key 'decoder.layers.foo'"):
        grow_tensor(g, "decoder.layers.foo", torch.zeros(1))
    with pytest.raises(GrowthError, match=r"shape \(2, 16, 32\) does not match the plan's old shape \(2, 16, 24\)"):
        grow_tensor(g, R.FC2_WEIGHT, torch.zeros(2, 16, 32))
    with pytest.raises(GrowthError, match=r"missing \['output_layer.weight'\]"):
        grow_state(plan, make_cfg(tie_embeddings=False), state)
    extra = {**state, R.OUTPUT: torch.zeros(56, 16)}
    with pytest.raises(GrowthError, match=r"unexpected \['output_layer.weight'\]"):
        grow_state(plan, cfg, extra)


def test_verify_reports_a_broken_growth():
    cfg = make_cfg()
    state = random_state(cfg)
    res = grow_state(grown_plan(cfg, {"ffn": "msg"}, ffn_hidden_size=32), cfg, state)
    good = verify(cfg, state, res.new_cfg, res.state, res.masks, tokens(cfg))
    assert good.within(1e-12) and math.isfinite(good.old_loss) and good.old_loss == pytest.approx(good.new_loss)
    broken = dict(res.state)
    broken[R.FC2_WEIGHT] = broken[R.FC2_WEIGHT] * 1.01
    bad = verify(cfg, state, res.new_cfg, broken, res.masks, tokens(cfg))
    assert not bad.within(1e-6, 1e-6) and bad.abs_dloss > 0
    # without its masks the MSG-grown model is a different function
    assert verify(cfg, state, res.new_cfg, res.state, None, tokens(cfg)).max_abs_dlogit > 1e-3
