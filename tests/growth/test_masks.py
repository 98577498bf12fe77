"""MSG masks: ramp values, serialisation, gradients of new parameters while ramping, loss continuity."""

from __future__ import annotations

import json

import pytest
import torch

from growth import MaskState, grow_moment, grow_state, prepare_growth
from growth.reference import reference_loss
from tests.growth.helpers import ALL_MSG, VARIANTS, all_msg_plan, grown_plan, make_cfg, random_state, tokens, variant_id

TWO_VARIANTS = [VARIANTS[0], VARIANTS[-1]]


def test_linear_ramp_values_and_done():
    m = MaskState(ramp_steps=4)
    assert [m.value(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [m.is_done(s) for s in (0, 3, 4, 9)] == [False, False, True, True]
    assert m.value() == 0.0 and m.advanced(2).value() == 0.5 and m.advanced(4).is_done()
    assert m.steps_done == 0  # advanced returns a new state


def test_cosine_ramp():
    m = MaskState(ramp_steps=2, shape="cosine")
    assert m.value(0) == 0.0 and m.value(1) == pytest.approx(0.5) and m.value(2) == 1.0
    assert MaskState(ramp_steps=4, shape="cosine").value(1) < MaskState(ramp_steps=4).value(1)


def test_mask_state_is_json_serialisable():
    cfg = make_cfg()
    g = prepare_growth(
        grown_plan(
            cfg, ALL_MSG, hidden_size=24, ffn_hidden_size=32, num_attention_heads=6, num_query_groups=6, num_layers=3
        ),
        cfg,
    )
    text = json.dumps(g.masks.advanced(3).to_dict())
    back = MaskState.from_dict(json.loads(text))
    assert back == g.masks.advanced(3)
    with pytest.raises(ValueError, match="unknown MaskState keys"):
        MaskState.from_dict({**json.loads(text), "c": 0.5})


def test_mask_values_mark_exactly_the_new_structure():
    cfg = make_cfg(num_query_groups=2)
    g = prepare_growth(
        grown_plan(
            cfg,
            ALL_MSG,
            hidden_size=24,
            ffn_hidden_size=32,
            num_attention_heads=6,
            num_query_groups=3,
            num_layers=5,
            plan={"depth": {"placement": "interleave"}},
        ),
        cfg,
    )
    v = g.masks.values(2, dtype=torch.float64)  # ramp of 8 steps -> c = 0.25
    assert v.hidden.tolist() == [1.0] * 16 + [0.25] * 8
    assert v.neuron.tolist() == [1.0] * 24 + [0.25] * 8
    assert v.head.tolist() == [1.0] * 4 + [0.25] * 2 and v.group.tolist() == [1.0, 1.0, 0.25]
    # 2 -> 5 layers interleaved: old 0, new, old 1, new, new
    assert v.depth == {1: 0.25, 3: 0.25, 4: 0.25}
    assert [s.source for s in g.layers] == [0, 0, 1, 1, 1]


def _new_regions(g, state):
    """{key: bool mask of new entries} (vocab padding rows excluded: their logits are forced, no gradient)."""
    out = {}
    for key, t in state.items():
        new = grow_moment(g, key, torch.ones(g.old_shape(key), dtype=t.dtype), 1) == 0
        if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            new[g.old_cfg.vocab_size :] = False
        out[key] = new
    return out


def _grads(cfg, state, masks, toks):
    params = {k: v.clone().requires_grad_(True) for k, v in state.items()}
    loss = reference_loss(cfg, params, toks, torch.roll(toks, -1, 1), masks)
    loss.backward()
    return {k: p.grad for k, p in params.items()}


@pytest.mark.parametrize("variant", TWO_VARIANTS, ids=variant_id)
def test_new_parameters_get_gradients_while_ramping(variant):
    cfg = make_cfg(variant)
    plan = all_msg_plan(cfg, 3, ramp={"steps": 4})
    g = prepare_growth(plan, cfg)
    res = grow_state(plan, cfg, random_state(cfg))
    regions = _new_regions(g, res.state)
    toks = tokens(cfg)
    at_zero = _grads(res.new_cfg, res.state, res.masks.values(0, dtype=torch.float64), toks)
    at_first_step = _grads(res.new_cfg, res.state, res.masks.values(1, dtype=torch.float64), toks)
    checked = 0
    for key, new in regions.items():
        if not new.any():
            continue
        checked += 1
        assert at_zero[key][new].abs().max() == 0, f"{key}: masked structure must not be trained at c = 0"
        grad = at_first_step[key][new]
        assert grad.abs().max() > 0, f"{key}: new entries get no gradient at c = 1/4"
        if key.startswith("decoder.layers") and key.endswith("weight") and "norm" not in key:
            assert (grad != 0).float().mean() > 0.5, key  # not just a few entries (the embedding: only seen tokens)
    assert checked == len(regions)  # every tensor grows somewhere


@pytest.mark.parametrize(
    "dim,changes",
    [
        ("ffn", dict(ffn_hidden_size=32)),
        ("heads", dict(num_attention_heads=6, num_query_groups=6)),
        ("depth", dict(num_layers=3)),
    ],
    ids=["ffn", "heads", "depth"],
)
def test_zero_init_output_projections_get_gradients(dim, changes):
    cfg = make_cfg()
    plan = grown_plan(cfg, {dim: "zero"}, **changes)
    g = prepare_growth(plan, cfg)
    res = grow_state(plan, cfg, random_state(cfg))
    grads = _grads(res.new_cfg, res.state, None, tokens(cfg))
    regions = _new_regions(g, res.state)
    key = {
        "ffn": "decoder.layers.mlp.linear_fc2.weight",
        "heads": "decoder.layers.self_attention.linear_proj.weight",
        "depth": "decoder.layers.mlp.linear_fc2.weight",
    }[dim]
    assert res.state[key][regions[key]].abs().max() == 0  # the new output projection starts at zero
    assert grads[key][regions[key]].abs().max() > 0


@pytest.mark.parametrize("variant", TWO_VARIANTS, ids=variant_id)
def test_loss_is_continuous_over_the_ramp(variant):
    cfg = make_cfg(variant)
    plan = all_msg_plan(cfg, 3)
    state = random_state(cfg)
    res = grow_state(plan, cfg, state)
    toks = tokens(cfg)
    labels = torch.roll(toks, -1, 1)
    old = reference_loss(cfg, state, toks, labels)

    def curve(n: int) -> torch.Tensor:
        m = MaskState.from_dict({**res.masks.to_dict(), "ramp_steps": n})
        return torch.stack(
            [
                reference_loss(res.new_cfg, res.state, toks, labels, m.values(s, dtype=torch.float64))
                for s in range(n + 1)
            ]
        )

    coarse, fine = curve(10), curve(40)
    assert abs(fine[0] - old) <= 1e-12
    plain = reference_loss(res.new_cfg, res.state, toks, labels)
    assert abs(fine[-1] - plain) <= 1e-12  # c = 1 is the unmasked grown model: removing masks changes nothing
    jump_coarse, jump_fine = coarse.diff().abs().max(), fine.diff().abs().max()
    assert jump_coarse > 0
    assert jump_fine <= 0.35 * jump_coarse  # 4x finer steps -> ~4x smaller jumps: no discontinuity
    assert jump_fine <= 0.1 * (1 + old)
