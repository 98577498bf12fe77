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
from training.config import ModelConfig, MuPConfig, ParallelConfig
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


@pytest.mark.parametrize("attention", ["fused", "unfused"])
@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[27], VARIANTS[-1]], ids=_id)
def test_reference_matches_megatron_under_mup(megatron, variant, attention):
    """μP (m = 32 / 8 = 4): attention x multiplier / d_head and logits x output_multiplier / m in both
    core-attention paths of megatron and in the reference."""
    from training.engine.model.build import build_model, transformer_config

    cfg = dataclasses.replace(BASE, **variant, mup=MuPConfig(base_width=8, attention_multiplier=2.5))
    chunk = build_model(cfg, transformer_config(cfg, ParallelConfig(), bf16=False, gloo=True), attention=attention)[0]
    chunk.eval()
    state = random_state(chunk, seed=7)
    load_logical_state_dict(chunk, state)
    tokens = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = chunk(tokens, torch.arange(12)[None].expand(2, 12), None)
        want = reference_logits(cfg, state, tokens)
        standard = reference_logits(dataclasses.replace(cfg, mup=None), state, tokens)
    v = cfg.vocab_size
    scale = want[..., :v].abs().max().item()
    assert (want[..., :v] - standard[..., :v]).abs().max() > 0.1 * scale  # μP is a different function
    torch.testing.assert_close(got[..., :v], want[..., :v], rtol=0, atol=1e-5 * (1 + scale))


def test_mup_init_scales_the_hidden_matrices_only(megatron):
    """μP init: hidden matrices drawn as megatron draws them x 1/sqrt(m) (same RNG stream as the standard
    parametrisation); embedding, output layer, norms and biases as in the standard parametrisation."""
    from training.engine.model.build import build_model, transformer_config

    cfg = dataclasses.replace(BASE, **VARIANTS[4], mup=MuPConfig(base_width=8))  # m = 4, untied
    states = {}
    for name, c in (("sp", dataclasses.replace(cfg, mup=None)), ("mup", cfg)):
        torch.manual_seed(11)
        states[name] = logical_state_dict(
            build_model(c, transformer_config(c, ParallelConfig(), bf16=False, gloo=True))[0]
        )
    hidden = {"linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight"}
    for key, sp in states["sp"].items():
        if any(key.endswith(h) for h in hidden):
            torch.testing.assert_close(states["mup"][key], sp / 2, rtol=1e-6, atol=0)
        else:
            assert torch.equal(states["mup"][key], sp), key
    assert states["mup"]["output_layer.weight"].std().item() == pytest.approx(cfg.init_std, rel=0.1)


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
