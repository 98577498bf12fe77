"""Property: any combination of exact operators on any (small) shape and block variant preserves the logits."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from growth import grow_state, plan_for, verify
from tests.growth.helpers import random_state, tokens
from training.config import ModelConfig


@st.composite
def growths(draw):
    norm = draw(st.sampled_from(["LayerNorm", "RMSNorm"]))
    hd = draw(st.sampled_from([2, 4, 6]))
    ng, r = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    nq = ng * r
    hidden = draw(st.integers(max(4, nq), 20))
    cfg = ModelConfig(
        num_layers=draw(st.integers(1, 3)),
        hidden_size=hidden,
        ffn_hidden_size=draw(st.integers(2, 20)),
        num_attention_heads=nq,
        num_query_groups=ng,
        kv_channels=hd,
        vocab_size=draw(st.integers(10, 40)),
        make_vocab_size_divisible_by=8,
        seq_length=16,
        normalization=norm,
        activation=draw(st.sampled_from(["gelu", "swiglu"])),
        position_embedding=draw(st.sampled_from(["rope", "xpos"])),
        xpos_scale_base=8.0,
        tie_embeddings=draw(st.booleans()),
        bias=draw(st.booleans()),
        input_multiplier=draw(st.floats(0.5, 2.0)),
        output_multiplier=draw(st.floats(0.5, 2.0)),
        norm_eps=draw(st.sampled_from([1e-5, 1e-6, 1e-2])),
    )
    ops, new = {}, {}
    hidden_ops = ["none", "msg", "clone"] + (["zero"] if norm == "RMSNorm" else [])
    op = draw(st.sampled_from(hidden_ops))
    if op != "none":
        ops["hidden"] = op
        new["hidden_size"] = hidden * draw(st.integers(2, 3)) if op == "clone" else hidden + draw(st.integers(1, 12))
    op = draw(st.sampled_from(["none", "msg", "zero", "clone"]))
    if op != "none":
        ops["ffn"] = op
        f = cfg.ffn_hidden_size
        new["ffn_hidden_size"] = f * draw(st.integers(2, 3)) if op == "clone" else f + draw(st.integers(1, 12))
    op = draw(st.sampled_from(["none", "msg", "zero", "clone"]))
    if op == "msg":
        ops["heads"] = op
        extra = draw(st.integers(1, 2))
        new.update(num_query_groups=ng + extra, num_attention_heads=(ng + extra) * r)
    elif op in ("zero", "clone"):
        a, b = draw(st.sampled_from([(1, 2), (2, 1), (2, 2)] if op == "clone" else [(1, 1), (1, 2), (2, 1), (3, 2)]))
        groups = ng * a if op == "clone" else ng + a - 1
        per_group = r * b if op == "clone" else r + b - 1
        if (groups, groups * per_group) != (ng, nq):
            ops["heads"] = op
            new.update(num_query_groups=groups, num_attention_heads=groups * per_group)
    op = draw(st.sampled_from(["none", "msg", "zero"]))
    options = {"ramp": {"steps": 5}, "seed": draw(st.integers(0, 2**31))}
    if op != "none":
        ops["depth"] = op
        new["num_layers"] = cfg.num_layers + draw(st.integers(1, 4))
        options["depth"] = {
            "placement": draw(st.sampled_from(["stack", "interleave"])),
            "init": draw(st.sampled_from(["copy", "fresh"])),
        }
    tp = draw(st.sampled_from([1, 2]))
    new_cfg = dataclasses.replace(cfg, **new)
    sizes = (new_cfg.num_attention_heads, new_cfg.query_groups, new_cfg.ffn_hidden_size)
    if any(s % tp for s in sizes):
        tp = 1
    return cfg, plan_for(cfg, new_cfg, ops, tp=tp, **options), draw(st.integers(0, 1000))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(growths())
def test_exact_growth_preserves_logits(case):
    cfg, plan, seed = case
    state = random_state(cfg, seed=seed)
    result = grow_state(plan, cfg, state)
    assert result.exact
    assert result.new_cfg.padded_vocab_size(plan.tp) == result.state["embedding.word_embeddings.weight"].shape[0]
    report = verify(cfg, state, result.new_cfg, result.state, result.masks, tokens(cfg, s=7, seed=seed))
    assert report.max_abs_dlogit <= 1e-10 * (1 + report.max_abs_logit), (plan, report)
    assert report.abs_dloss <= 1e-10
