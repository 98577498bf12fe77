"""Every exact operator x every dimension x every block variant preserves the function.

float64: max |dlogit| <= 1e-10; fp32: <= 1e-5 (1 + max |logit|); random non-trivial weights (norm
gains and biases included), muP multipliers != 1, random tokens. MSG is checked with masks at c = 0.
"""

from __future__ import annotations

import pytest
import torch

from growth import grow_state, verify
from tests.growth.helpers import MUP, VARIANTS, grown_plan, make_cfg, random_state, tokens, variant_id
from training.config_base import ConfigError

# (id, operators, new sizes (ModelConfig fields), extra plan options); head growth is given per MHA/GQA
CASES = [
    ("hidden-msg", {"hidden": "msg"}, dict(hidden_size=24), {}),
    ("hidden-zero", {"hidden": "zero"}, dict(hidden_size=28), {}),
    ("hidden-clone", {"hidden": "clone"}, dict(hidden_size=48), {}),
    ("ffn-msg", {"ffn": "msg"}, dict(ffn_hidden_size=40), {}),
    ("ffn-zero", {"ffn": "zero"}, dict(ffn_hidden_size=36), {}),
    ("ffn-clone", {"ffn": "clone"}, dict(ffn_hidden_size=48), {}),
    ("heads-msg", {"heads": "msg"}, "heads+groups", {}),
    ("heads-msg-in-groups", {"heads": "msg"}, "per group x2", {}),
    ("heads-zero", {"heads": "zero"}, "heads", {}),
    ("heads-clone", {"heads": "clone"}, "heads x2", {}),
    ("heads-clone-per-group", {"heads": "clone"}, "per group x2", {}),
    *[
        (f"depth-{op}-{place}-{init}", {"depth": op}, dict(num_layers=n), {"depth": {"placement": place, "init": init}})
        for op in ("msg", "zero")
        for place in ("stack", "interleave")
        for init in ("copy", "fresh")
        for n in ([3] if place == "stack" else [5])
    ],
    ("all-msg", {"hidden": "msg", "ffn": "msg", "heads": "msg", "depth": "msg"}, "all", {"tp": 2}),
    ("mixed", {"hidden": "clone", "ffn": "zero", "heads": "msg", "depth": "zero"}, "all x2", {}),
]


def _changes(cfg, spec):
    """New sizes for a case; head growth depends on MHA/GQA (groups grow with heads for msg)."""
    if isinstance(spec, dict):
        return dict(spec)
    nq, ng = cfg.num_attention_heads, cfg.query_groups
    r = nq // ng
    heads_groups = dict(num_attention_heads=nq + 2 * r, num_query_groups=ng + 2)  # whole new groups
    heads_only = dict(num_attention_heads=nq * 2, num_query_groups=ng if r > 1 else ng * 2)  # GQA: bigger groups
    heads_x2 = dict(num_attention_heads=nq * 2, num_query_groups=ng * 2)
    return {
        "heads+groups": heads_groups,
        "heads": heads_only,
        "heads x2": heads_x2,
        "per group x2": dict(num_attention_heads=nq * 2, num_query_groups=ng),
        "all": dict(hidden_size=32, ffn_hidden_size=32, num_layers=4, **heads_groups),
        "all x2": dict(hidden_size=32, ffn_hidden_size=40, num_layers=3, **heads_x2),
    }[spec]


def _check(cfg, case, dtype):
    _, ops, spec, options = case
    changes = _changes(cfg, spec)
    tp = options.pop("tp", 1) if "tp" in options else 1
    plan = grown_plan(cfg, ops, tp=tp, plan=options, **changes)
    state = random_state(cfg, dtype=dtype)
    result = grow_state(plan, cfg, state)
    assert result.exact
    for key, t in result.state.items():
        assert t.dtype == dtype, key
    report = verify(cfg, state, result.new_cfg, result.state, result.masks, tokens(cfg))
    assert report.max_abs_logit > 1.0  # non-trivial logits
    return report


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_exact_operators_preserve_logits(case, variant):
    cfg = make_cfg(variant)
    if case[0] == "hidden-zero" and cfg.normalization == "LayerNorm":
        with pytest.raises(ConfigError, match="LayerNorm"):
            _check(cfg, (case[0], case[1], case[2], dict(case[3])), torch.float64)
        return
    r64 = _check(cfg, (case[0], case[1], case[2], dict(case[3])), torch.float64)
    assert r64.max_abs_dlogit <= 1e-10, r64
    assert r64.abs_dloss <= 1e-10, r64
    r32 = _check(cfg, (case[0], case[1], case[2], dict(case[3])), torch.float32)
    assert r32.within(1e-5, 1e-5), r32


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_exact_operators_preserve_logits_under_mup(case, variant):
    """μP (attention x multiplier / d_head, logits x output_multiplier / m): every exact operator,
    float64; the grown config keeps every μP setting (it is the μP model of its new width)."""
    cfg = make_cfg(variant, mup=MUP)
    if case[0] == "hidden-zero" and cfg.normalization == "LayerNorm":
        return  # refused as in the standard parametrisation (test above)
    _, ops, spec, options = case
    options = dict(options)
    tp = options.pop("tp", 1)
    plan = grown_plan(cfg, ops, tp=tp, plan=options, **_changes(cfg, spec))
    state = random_state(cfg)
    result = grow_state(plan, cfg, state)
    report = verify(cfg, state, result.new_cfg, result.state, result.masks, tokens(cfg))
    assert report.max_abs_logit > 1.0
    assert report.max_abs_dlogit <= 1e-10 and report.abs_dloss <= 1e-10, report
    new = result.new_cfg
    assert new.mup == cfg.mup and new.output_multiplier == cfg.output_multiplier
    assert new.width_multiplier == new.hidden_size / MUP.base_width
    r = new.hidden_size / cfg.hidden_size if ops.get("hidden") in ("msg", "zero") else 1.0
    assert new.input_multiplier == pytest.approx(cfg.input_multiplier / (r if cfg.tie_embeddings else 1.0), rel=1e-15)
