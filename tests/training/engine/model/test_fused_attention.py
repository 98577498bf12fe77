"""Fused core attention (torch ``scaled_dot_product_attention``) computes what megatron's unfused
``DotProductAttention`` does: equal logits, losses and gradients (fp32 tolerance) on every block
variant, also with growth masks in place (xPos, GQA, new heads joining old groups), and dropout only
in training mode."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from growth import grow_state
from tests.growth.helpers import VARIANTS, all_msg_plan, make_cfg, random_state, tokens, variant_id
from training.config import ParallelConfig
from training.engine.model.attention import FLMCoreAttention
from training.engine.model.masks import apply_masks
from training.engine.model.state import load_logical_state_dict


@pytest.fixture(scope="module")
def build():
    from training.engine.model.build import build_model, transformer_config
    from training.engine.parallel import setup_layout

    setup_layout(ParallelConfig(), 1234)

    def make(cfg, attention, state):
        chunk = build_model(cfg, transformer_config(cfg, ParallelConfig(), bf16=False, gloo=True), attention=attention)[
            0
        ]
        load_logical_state_dict(chunk, state)
        return chunk

    return make


def _loss_and_grads(chunk, toks):
    chunk.zero_grad(set_to_none=True)
    labels = toks.roll(-1, dims=1)
    losses = chunk(toks, torch.arange(toks.shape[1])[None].expand_as(toks), None, labels=labels)
    loss = losses.float().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in chunk.named_parameters() if p.grad is not None}


def _assert_same(fused, unfused, toks):
    assert all(m.fused for m in fused.modules() if isinstance(m, FLMCoreAttention))
    assert not any(m.fused for m in unfused.modules() if isinstance(m, FLMCoreAttention))
    lf, gf = _loss_and_grads(fused, toks)
    lu, gu = _loss_and_grads(unfused, toks)
    torch.testing.assert_close(lf, lu, rtol=1e-5, atol=1e-6)
    assert gf.keys() == gu.keys()
    for name in gf:
        torch.testing.assert_close(gf[name], gu[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_fused_equals_unfused(build, variant):
    cfg = make_cfg(variant)
    state = random_state(cfg, dtype=torch.float32)
    toks = tokens(cfg, s=12)
    _assert_same(build(cfg, "fused", state), build(cfg, "unfused", state), toks)


@pytest.mark.parametrize("variant", [VARIANTS[5], VARIANTS[30]], ids=variant_id)
def test_fused_equals_unfused_with_growth_masks(build, variant):
    cfg = make_cfg(variant)
    plan = all_msg_plan(cfg, 4, ramp={"steps": 2})
    res = grow_state(plan, cfg, random_state(cfg, dtype=torch.float32))
    fused, unfused = build(res.new_cfg, "fused", res.state), build(res.new_cfg, "unfused", res.state)
    for step in (0, 1):
        assert apply_masks([fused], res.masks, step=step) and apply_masks([unfused], res.masks, step=step)
        _assert_same(fused, unfused, tokens(cfg, s=12))


def test_attention_dropout_only_in_training(build):
    cfg = dataclasses.replace(make_cfg(VARIANTS[1]), attention_dropout=0.5)
    state = random_state(cfg, dtype=torch.float32)
    toks = tokens(cfg, s=12)
    plain = build(make_cfg(VARIANTS[1]), "unfused", state).eval()
    fused = build(cfg, "fused", state)
    pos = torch.arange(toks.shape[1])[None].expand_as(toks)
    with torch.no_grad():
        ref = plain(toks, pos, None)
        fused.eval()
        torch.testing.assert_close(fused(toks, pos, None), ref)  # eval: no dropout
        fused.train()
        assert (fused(toks, pos, None) - ref).abs().max() > 1e-3  # training: attention dropout applied


def test_grouped_query_attention_uses_sdpa_natively():
    """On the pinned torch (>= 2.5) the fused path hands SDPA keys/values with the groups' heads only
    (``enable_gqa``), so the GQA cases above compare that path, not an expanded copy, with megatron's."""
    from training.engine.model.attention import SDPA_NATIVE_GQA

    assert SDPA_NATIVE_GQA
