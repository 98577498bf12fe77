"""Model variants, random non-trivial logical states and plans by shape, for the growth and model tests."""

from __future__ import annotations

import dataclasses
import itertools

import torch

from growth import ModelShape, logical_shapes, plan_for
from training.config import ModelConfig, MuPConfig

BASE = ModelConfig(
    num_layers=2,
    hidden_size=16,
    ffn_hidden_size=24,
    num_attention_heads=4,
    vocab_size=50,
    make_vocab_size_divisible_by=8,
    seq_length=16,
    input_multiplier=1.7,
    output_multiplier=0.6,
    xpos_scale_base=8.0,
)

#: μP for BASE: m = 16 / 8 = 2 before growth; an attention multiplier != 1
MUP = MuPConfig(base_width=8, attention_multiplier=1.3)

#: every block variant: norm x activation x position embedding x tied x MHA/GQA (bias alternates)
VARIANTS = [
    dict(
        normalization=norm,
        activation=act,
        position_embedding=pos,
        tie_embeddings=tied,
        num_query_groups=groups,
        bias=(i % 2 == 0),
    )
    for i, (norm, act, pos, tied, groups) in enumerate(
        itertools.product(("LayerNorm", "RMSNorm"), ("gelu", "swiglu"), ("rope", "xpos"), (True, False), (None, 2))
    )
]


def variant_id(v: dict) -> str:
    return "-".join(
        [
            v["normalization"][:3],
            v["activation"],
            v["position_embedding"],
            "tied" if v["tie_embeddings"] else "untied",
            "gqa" if v["num_query_groups"] else "mha",
            "bias" if v["bias"] else "nobias",
        ]
    )


def make_cfg(variant: dict | None = None, **changes) -> ModelConfig:
    cfg = dataclasses.replace(BASE, **(variant or {}), **changes)
    cfg.validate("model")
    return cfg


def random_state(cfg: ModelConfig, *, seed: int = 0, dtype=torch.float64, tp: int = 1) -> dict[str, torch.Tensor]:
    """Random logical state: weights ~ N(0, 0.3^2), norm gains 1 + N(0, 0.3^2), biases ~ N(0, 0.2^2)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in logical_shapes(cfg, ModelShape.from_model_config(cfg, tp)).items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        if "norm" in key and key.endswith("weight"):
            t = 1 + 0.3 * noise
        elif key.endswith("bias"):
            t = 0.2 * noise
        else:
            t = 0.3 * noise
        out[key] = t.to(dtype)
    return out


def grown_plan(cfg: ModelConfig, operators: dict, *, tp: int = 1, **changes):
    """The plan growing ``cfg`` to ``cfg`` with ``changes`` (ModelConfig fields) using ``operators``.

    Plan options go through ``plan`` (a dict of GrowthPlan sections); kv_channels is pinned to the
    old head dim so that hidden growth does not change it. New layers go on top of the stack unless
    ``plan`` says otherwise (the tests name which old layer each new one copies under that placement).
    """
    options = dict(changes.pop("plan", {}))
    options["depth"] = {"placement": "stack", **options.get("depth", {})}
    new = dataclasses.replace(cfg, kv_channels=cfg.head_dim, **changes)
    return plan_for(cfg, new, operators, tp=tp, **{"ramp": {"steps": 8}, **options})


ALL_MSG = {"hidden": "msg", "ffn": "msg", "heads": "msg", "depth": "msg"}


def all_msg_plan(cfg: ModelConfig, num_layers: int, **plan_options):
    """MSG on every dimension: hidden 24, FFN 32, one more query group (with its heads), and
    ``num_layers`` layers; ``plan_options`` are GrowthPlan sections (e.g. ``ramp={"steps": 4}``)."""
    nq, ng = cfg.num_attention_heads, cfg.query_groups
    return grown_plan(
        cfg,
        ALL_MSG,
        hidden_size=24,
        ffn_hidden_size=32,
        num_attention_heads=nq + nq // ng,
        num_query_groups=ng + 1,
        num_layers=num_layers,
        plan=plan_options,
    )


def tokens(cfg: ModelConfig, b: int = 2, s: int = 9, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (b, s), generator=torch.Generator().manual_seed(seed))
