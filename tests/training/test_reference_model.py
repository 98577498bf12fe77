"""The plain-torch reference forward equals the megatron model (one process, TP = PP = 1, fp32).

Every block variant: LayerNorm/RMSNorm x GELU/SwiGLU x RoPE/xPos x tied/untied x MHA/GQA x bias,
with muP multipliers != 1 and random non-trivial weights (norm gains/biases included), loaded into
megatron through ``load_logical_state_dict``.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from growth.reference import reference_logits, reference_loss
from training.config import ModelConfig, ParallelConfig
from training.engine.model.state import load_logical_state_dict, logical_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ModelConfig(
    num_layers=2,
    hidden_size=32,
    ffn_hidden_size=48,
    num_attention_heads=4,
    vocab_size=90,
    make_vocab_size_divisible_by=32,
    seq_length=16,
    input_multiplier=1.5,
    output_multiplier=0.7,
    norm_eps=1e-5,
    xpos_scale_base=16.0,
)

VARIANTS = [
    dict(
        normalization=norm,
        activation=act,
        position_embedding=pos,
        tie_embeddings=tied,
        num_query_groups=groups,
        bias=bias,
    )
    for norm, act, pos, tied, groups, bias in itertools.product(
        ("LayerNorm", "RMSNorm"), ("gelu", "swiglu"), ("rope", "xpos"), (True, False), (None, 2), (True, False)
    )
]


def _id(v: dict) -> str:
    return "-".join(
        [
            v["normalization"],
            v["activation"],
            v["position_embedding"],
            "tied" if v["tie_embeddings"] else "untied",
            "gqa" if v["num_query_groups"] else "mha",
            "bias" if v["bias"] else "nobias",
        ]
    )


@pytest.fixture(scope="module")
def megatron():
    from training.engine.parallel import setup_layout

    setup_layout(ParallelConfig(), 1234)
    from training.engine.model.build import build_model, transformer_config

    def build(cfg: ModelConfig):
        chunk = build_model(cfg, transformer_config(cfg, ParallelConfig(), bf16=False, gloo=True))[0]
        chunk.eval()
        return chunk

    return build


def random_state(chunk, seed: int) -> dict[str, torch.Tensor]:
    """Random values for every logical tensor; norm gains around 1, biases non-zero."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in logical_state_dict(chunk).items():
        noise = torch.randn(value.shape, generator=gen, dtype=value.dtype)
        out[key] = 1 + 0.3 * noise if "norm" in key and key.endswith("weight") else 0.2 * noise
    return out


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_reference_matches_megatron(megatron, variant):
    cfg = dataclasses.replace(BASE, **variant)
    chunk = megatron(cfg)
    state = random_state(chunk, seed=7)
    load_logical_state_dict(chunk, state)
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(12)[None].expand(2, 12)
    with torch.no_grad():
        got = chunk(tokens, positions, None)
        want = reference_logits(cfg, state, tokens)
    assert got.shape == want.shape == (2, 12, cfg.padded_vocab_size(1))
    v = cfg.vocab_size
    scale = want[..., :v].abs().max().item()
    assert scale > 1.0  # the check is not trivially satisfied by tiny logits
    torch.testing.assert_close(got[..., :v], want[..., :v], rtol=0, atol=1e-5 * (1 + scale))
    assert (got[..., v:] == torch.finfo(got.dtype).min).all()
    assert (want[..., v:] == torch.finfo(want.dtype).min).all()


def test_logical_keys_match_megatron_sharded_state_dict(megatron):
    """``logical_state_dict`` uses the keys (and stacked shapes) of megatron's dist checkpoints."""
    from growth.roles import logical_shapes
    from growth.shape import ModelShape

    for variant in (VARIANTS[0], VARIANTS[-1]):
        cfg = dataclasses.replace(BASE, **variant)
        chunk = megatron(cfg)
        logical = logical_state_dict(chunk)
        sharded = {}
        for item in chunk.sharded_state_dict().values():
            if hasattr(item, "global_shape") and not item.key.endswith("_extra_state"):
                sharded[item.key] = tuple(item.global_shape)
            elif type(item).__name__ == "ShardedTensorFactory":
                sharded[item.key] = None
        assert set(logical) == set(sharded)
        for key, shape in sharded.items():
            if shape is not None:
                assert tuple(logical[key].shape) == shape, key
        assert {k: tuple(v.shape) for k, v in logical.items()} == logical_shapes(cfg, ModelShape.from_model_config(cfg))


def test_load_logical_state_dict_round_trip_and_errors(megatron):
    cfg = dataclasses.replace(BASE, **VARIANTS[5])
    chunk = megatron(cfg)
    state = random_state(chunk, seed=1)
    load_logical_state_dict(chunk, state)
    back = logical_state_dict(chunk)
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key
    with pytest.raises(KeyError, match="does not"):
        load_logical_state_dict(chunk, {**state, "extra.weight": torch.zeros(1)})
    missing = dict(state)
    missing.pop("decoder.final_layernorm.weight")
    with pytest.raises(KeyError, match="final_layernorm"):
        load_logical_state_dict(chunk, missing)
    bad = dict(state)
    bad["decoder.layers.mlp.linear_fc2.weight"] = bad["decoder.layers.mlp.linear_fc2.weight"][:1]
    with pytest.raises(ValueError, match="layers"):
        load_logical_state_dict(chunk, bad)


def test_reference_loss_matches_megatron_loss(megatron):
    cfg = dataclasses.replace(BASE, **VARIANTS[9])
    chunk = megatron(cfg)
    state = random_state(chunk, seed=2)
    load_logical_state_dict(chunk, state)
    tokens = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(4))
    labels = torch.roll(tokens, -1, dims=1)
    with torch.no_grad():
        per_token = chunk(tokens, torch.arange(10)[None].expand(2, 10), None, labels=labels)
        want = reference_loss(cfg, state, tokens, labels)
    torch.testing.assert_close(per_token.float().mean(), want, rtol=1e-5, atol=1e-6)
