"""Adam moments across growth.

The strongest check: for an exact growth, the grown model's gradient on every copied entry equals
the old gradient mapped by ``grow_moment`` (order 1), and its square the squared old gradient mapped
with order 2. Moments are averages of such gradients, so the mapped moments are exactly what the
grown model would have accumulated along the old training run.
"""

from __future__ import annotations

import pytest
import torch

from growth import AdamState, GrowthError, grow_adam_state, grow_moment, grow_state, prepare_growth
from growth.reference import reference_loss
from tests.growth.helpers import MUP, VARIANTS, grown_plan, make_cfg, random_state, tokens, variant_id

CASES = [
    ("hidden-msg", {"hidden": "msg"}, dict(hidden_size=24)),
    ("hidden-zero", {"hidden": "zero"}, dict(hidden_size=24)),
    ("hidden-clone", {"hidden": "clone"}, dict(hidden_size=32)),
    ("ffn-msg", {"ffn": "msg"}, dict(ffn_hidden_size=32)),
    ("ffn-zero", {"ffn": "zero"}, dict(ffn_hidden_size=32)),
    ("ffn-clone", {"ffn": "clone"}, dict(ffn_hidden_size=72)),
    ("heads-msg", {"heads": "msg"}, "groups"),
    ("heads-zero", {"heads": "zero"}, "groups"),
    ("heads-clone", {"heads": "clone"}, "x2"),
    ("heads-clone-per-group", {"heads": "clone"}, "r x2"),
    ("depth-msg", {"depth": "msg"}, dict(num_layers=4)),
    ("depth-zero", {"depth": "zero"}, dict(num_layers=3)),
    ("all-clone", {"hidden": "clone", "ffn": "clone", "heads": "clone"}, "all x2"),
]
RMS_VARIANTS = [v for v in VARIANTS if v["normalization"] == "RMSNorm"]


def _changes(cfg, spec):
    if isinstance(spec, dict):
        return spec
    nq, ng = cfg.num_attention_heads, cfg.query_groups
    x2 = dict(num_attention_heads=2 * nq, num_query_groups=2 * ng)
    return {
        "groups": dict(num_attention_heads=nq + nq // ng, num_query_groups=ng + 1),
        "x2": x2,
        "r x2": dict(num_attention_heads=2 * nq, num_query_groups=ng),
        "all x2": dict(hidden_size=32, ffn_hidden_size=48, **x2),
    }[spec]


def _grads(cfg, state, masks, toks):
    params = {k: v.clone().requires_grad_(True) for k, v in state.items()}
    reference_loss(cfg, params, toks, torch.roll(toks, -1, 1), masks).backward()
    return {k: p.grad for k, p in params.items()}


@pytest.mark.parametrize("variant", [RMS_VARIANTS[3], RMS_VARIANTS[12]], ids=variant_id)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mapped_gradients_equal_grown_gradients(case, variant):
    _check_mapped_gradients(make_cfg(variant), case)


@pytest.mark.parametrize("variant", [RMS_VARIANTS[3], RMS_VARIANTS[12]], ids=variant_id)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mapped_gradients_equal_grown_gradients_under_mup(case, variant):
    """μP: where hidden growth rescales the readout (untied output layer or tied embedding) by r,
    its gradient is the old one / r, and the mapped moments follow (x 1/r, x 1/r^2)."""
    _check_mapped_gradients(make_cfg(variant, mup=MUP), case)


def _check_mapped_gradients(cfg, case):
    plan = grown_plan(cfg, case[1], **_changes(cfg, case[2]))
    g = prepare_growth(plan, cfg)
    state = random_state(cfg)
    res = grow_state(plan, cfg, state)
    toks = tokens(cfg)
    old = _grads(cfg, state, None, toks)
    new = _grads(res.new_cfg, res.state, res.masks.values(0, dtype=torch.float64) if res.masks else None, toks)
    for key in state:
        copied = grow_moment(g, key, torch.ones_like(state[key]), 1) != 0
        m1 = grow_moment(g, key, old[key], 1)
        m2 = grow_moment(g, key, old[key] ** 2, 2)
        scale = 1 + old[key].abs().max()
        assert (m1[~copied] == 0).all() and (m2[~copied] == 0).all(), key
        assert (m1[copied] - new[key][copied]).abs().max() <= 1e-10 * scale, key
        assert (m2[copied] - new[key][copied] ** 2).abs().max() <= 1e-10 * scale**2, key


def test_old_moments_are_copied_and_new_ones_are_zero():
    cfg = make_cfg()
    plan = grown_plan(
        cfg, {"hidden": "msg", "ffn": "zero", "depth": "msg"}, hidden_size=24, ffn_hidden_size=32, num_layers=3
    )
    g = prepare_growth(plan, cfg)
    state = random_state(cfg, seed=1)
    m = {k: v.abs() + 0.1 for k, v in state.items()}
    fc1 = grow_moment(g, "decoder.layers.mlp.linear_fc1.weight", m["decoder.layers.mlp.linear_fc1.weight"], 1)
    assert fc1.shape == (3, 32, 24)
    assert torch.equal(fc1[:2, :24, :16], m["decoder.layers.mlp.linear_fc1.weight"])
    assert (fc1[:2, 24:] == 0).all() and (fc1[:2, :, 16:] == 0).all() and (fc1[2] == 0).all()
    emb = grow_moment(g, "embedding.word_embeddings.weight", m["embedding.word_embeddings.weight"], 2)
    assert torch.equal(emb[:, :16], m["embedding.word_embeddings.weight"]) and (emb[:, 16:] == 0).all()


def test_clone_moments_follow_the_gradient_scaling():
    cfg = make_cfg()
    g = prepare_growth(grown_plan(cfg, {"hidden": "clone"}, hidden_size=32), cfg)
    m = torch.rand(2, 16, 24, dtype=torch.float64) + 0.1
    key = "decoder.layers.mlp.linear_fc2.weight"  # rows produce the (repeated) residual stream
    assert torch.equal(grow_moment(g, key, m, 1), torch.cat([m, m], 1) / 2)
    assert torch.equal(grow_moment(g, key, m, 2), torch.cat([m, m], 1) / 4)
    q = torch.rand(2, 48, 16, dtype=torch.float64)
    key = "decoder.layers.self_attention.linear_qkv.weight"  # columns read it: weights / 2, moments kept
    assert torch.equal(grow_moment(g, key, q, 2), torch.cat([q, q], 2))


def test_adam_state_keeps_the_step():
    cfg = make_cfg()
    plan = grown_plan(cfg, {"ffn": "msg"}, ffn_hidden_size=32)
    g = prepare_growth(plan, cfg)
    state = random_state(cfg)
    adam = AdamState(
        exp_avg={k: v.clone() for k, v in state.items()},
        exp_avg_sq={k: v.abs() for k, v in state.items()},
        step=torch.tensor(1234.0),
    )
    grown = grow_adam_state(g, adam)
    assert torch.equal(grown.step, adam.step)
    assert set(grown.exp_avg) == set(grown.exp_avg_sq) == set(state)
    assert grown.exp_avg["decoder.layers.mlp.linear_fc2.weight"].shape == (2, 16, 32)
    with pytest.raises(GrowthError, match="old shape"):
        grow_moment(g, "decoder.layers.mlp.linear_fc2.weight", torch.zeros(2, 16, 32), 1)


def test_mup_readout_moments_are_scaled_with_the_readout():
    """μP msg hidden growth 16 -> 24 (m 2 -> 3): the untied output layer's kept block is x 3/2, its
    moments x 2/3 and x 4/9; every other tensor and moment is mapped as in the standard parametrisation."""
    cfg = make_cfg(VARIANTS[3], mup=MUP)
    plan = grown_plan(cfg, {"hidden": "msg"}, hidden_size=24)
    g = prepare_growth(plan, cfg)
    assert g.readout_scale == 1.5 and g.readout_key == "output_layer.weight"
    state = random_state(cfg)
    grown = grow_state(plan, cfg, state).state
    out = "output_layer.weight"
    assert torch.equal(grown[out][:, :16], state[out] * 1.5)
    m = state[out].abs() + 0.1
    assert torch.equal(grow_moment(g, out, m, 1)[:, :16], m * (1 / 1.5))
    assert torch.equal(grow_moment(g, out, m, 2)[:, :16], m * (1 / 1.5) ** 2)
    sp = prepare_growth(grown_plan(make_cfg(VARIANTS[3]), {"hidden": "msg"}, hidden_size=24), make_cfg(VARIANTS[3]))
    for key in state:
        if key != out:
            assert torch.equal(grow_moment(g, key, state[key], 2), grow_moment(sp, key, state[key], 2)), key
