"""``apply_masks`` on a single-process megatron model equals the reference forward with the same masks."""

from __future__ import annotations

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from growth import grow_state
from growth.reference import reference_logits
from tests.growth.helpers import (
    ALL_MSG,
    MUP,
    VARIANTS,
    all_msg_plan,
    grown_plan,
    make_cfg,
    random_state,
    tokens,
    variant_id,
)
from training.config import ParallelConfig
from training.engine.model.masks import apply_masks, clear_masks
from training.engine.model.state import load_logical_state_dict


@pytest.fixture(scope="module")
def build():
    from training.engine.parallel import setup_layout

    setup_layout(ParallelConfig(), 1234)
    from training.engine.model.build import build_model, transformer_config

    def make(cfg):
        chunk = build_model(cfg, transformer_config(cfg, ParallelConfig(), bf16=False, gloo=True))[0]
        chunk.eval()
        return chunk

    return make


def _megatron_logits(chunk, toks):
    with torch.no_grad():
        return chunk(toks, torch.arange(toks.shape[1])[None].expand_as(toks), None)


def _masked_modules(chunk):
    out = []
    for name, m in chunk.named_modules():
        for attr in ("hidden_mask", "head_mask", "group_mask", "neuron_mask", "depth_gate"):
            if getattr(m, attr, None) is not None:
                out.append(f"{name}.{attr}")
    return out


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[13], VARIANTS[-1]], ids=variant_id)
def test_apply_masks_matches_reference(build, variant):
    _check_masks_match_reference(build, make_cfg(variant))


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[-1]], ids=variant_id)
def test_apply_masks_matches_reference_under_mup(build, variant):
    """μP, all msg (m 2 -> 3, readout rescaled, tied: input multiplier derived): the megatron model of
    the grown config equals the reference at c = 0 (the old function), 1/2 and 1."""
    _check_masks_match_reference(build, make_cfg(variant, mup=MUP))


def _check_masks_match_reference(build, cfg):
    plan = all_msg_plan(cfg, 4, ramp={"steps": 2}, depth={"placement": "interleave"})
    state = random_state(cfg, dtype=torch.float32)
    res = grow_state(plan, cfg, state)
    chunk = build(res.new_cfg)
    load_logical_state_dict(chunk, res.state)
    toks = tokens(cfg, s=12)
    v = cfg.vocab_size
    old = reference_logits(cfg, state, toks)[..., :v]
    tol = dict(rtol=0, atol=1e-5 * (1 + old.abs().max().item()))

    assert apply_masks([chunk], res.masks, step=0)  # c = 0: the old function
    gates = {layer.layer_number - 1: layer.depth_gate for layer in chunk.decoder.layers}
    assert gates == {0: None, 1: 0.0, 2: None, 3: 0.0}
    at0 = _megatron_logits(chunk, toks)
    torch.testing.assert_close(at0[..., :v], old, **tol)
    torch.testing.assert_close(at0, reference_logits(res.new_cfg, res.state, toks, res.masks.values(0)), **tol)

    assert apply_masks([chunk], res.masks, step=1)  # c = 0.5
    half = _megatron_logits(chunk, toks)
    torch.testing.assert_close(half, reference_logits(res.new_cfg, res.state, toks, res.masks.values(1)), **tol)
    assert (half[..., :v] - old).abs().max() > 1e-3  # the new structure does contribute

    assert not apply_masks([chunk], res.masks, step=2)  # ramp done: masks removed
    assert _masked_modules(chunk) == []
    full = _megatron_logits(chunk, toks)
    torch.testing.assert_close(full, reference_logits(res.new_cfg, res.state, toks), **tol)
    torch.testing.assert_close(full, reference_logits(res.new_cfg, res.state, toks, res.masks.values(c=1.0)), **tol)


def test_clear_masks_removes_everything(build):
    cfg = make_cfg()
    plan = grown_plan(
        cfg, ALL_MSG, hidden_size=24, ffn_hidden_size=32, num_attention_heads=6, num_query_groups=6, num_layers=3
    )
    res = grow_state(plan, cfg, random_state(cfg, dtype=torch.float32))
    chunk = build(res.new_cfg)
    apply_masks([chunk], res.masks)
    assert len(_masked_modules(chunk)) == 1 + 2 * 3 + 1 + 3 * 2 + 3 + 1  # emb, norms, attn x2, mlp, new layer
    clear_masks([chunk])
    assert _masked_modules(chunk) == []
