"""Which Hugging Face architecture computes each block variant of the project, and its tensors.

| project variant (``model:``)                                   | transformers architecture |
|----------------------------------------------------------------|---------------------------|
| RMSNorm + SwiGLU + RoPE; any bias, GQA, head dim, tied/untied  | ``LlamaForCausalLM`` (``attention_bias = mlp_bias = bias``) |
| LayerNorm + GELU + RoPE; bias or not, GQA, tied/untied; head dim = hidden / heads | ``GPTNeoXForCausalLM`` (``rotary_pct = 1``, ``use_parallel_residual = false``) |
| LayerNorm + SwiGLU + RoPE, no bias; head dim = hidden / heads  | ``StableLmForCausalLM`` (``partial_rotary_factor = 1``, no qk-norm, sequential residual) |
| every variant (xPos; RMSNorm + GELU; LayerNorm + SwiGLU with bias; any head dim ...) | ``FLMForCausalLM``: the project's own code (:mod:`training.hf.flm_arch`, ``trust_remote_code``) |

Why these are exact: all three are pre-norm decoders with the rotate-half RoPE convention that
megatron uses (dims ``j`` and ``j + d/2`` form a pair), causal softmax attention scaled by
``1/sqrt(head_dim)`` and the same norms (``torch.nn.LayerNorm`` with bias; Llama's RMSNorm).
GPT-NeoX's fused ``query_key_value`` holds per head ``[q, k, v]``, which is the project's fused
layout with one head per group; GPT-NeoX has no GQA, so a grouped model is exported with each
group's key/value rows repeated for every head of the group (``repeat_kv``, exact). GPT-NeoX's MLP
always has biases: a model without biases gets zero MLP biases (exact). ``exact GELU`` (erf) is
``hidden_act: gelu`` in both.

Each architecture maps the *export state* (:class:`training.hf.fold.Fold`: vocabulary trimmed to
the tokenizer's rows, muP multipliers folded in for the standard architectures, kept for FLM) to its
tensor names: every exported tensor is a :class:`Piece`, a function of one logical tensor (one layer
of it for the per-layer tensors), so an export converts one tensor at a time. :func:`select_architecture` picks one: ``standard`` (refuse
when none fits), ``flm``, or ``auto`` (standard when one fits, else FLM).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Protocol, TypeVar

import torch
import transformers
from torch import Tensor

from growth import roles as R
from training.hf import flm_arch
from training.hf.errors import HFInteropError
from training.hf.pieces import Piece


class _HasShape(Protocol):
    @property
    def shape(self) -> tuple[int, ...] | torch.Size: ...


Shaped = TypeVar("Shaped", bound=_HasShape)


@dataclass(frozen=True)
class SpecialIds:
    """Token ids recorded in the HF config (None where the tokenizer has none)."""

    bos: Optional[int] = None
    eos: Optional[int] = None
    pad: Optional[int] = None


def qkv_part(t: Tensor, cfg, which: int) -> Tensor:
    """Part ``which`` (0: queries ``[nq*d, ...]``, 1: keys, 2: values ``[ng*d, ...]``) of fused QKV
    rows, per group ``[q heads of the group, k, v]``."""
    ng, d = cfg.query_groups, cfg.head_dim
    r = cfg.num_attention_heads // ng
    rest = tuple(t.shape[1:])
    g = t.reshape(ng, r + 2, d, *rest)
    part = g[:, :r] if which == 0 else g[:, r + which - 1]
    return part.reshape(-1, *rest)


def split_qkv(t: Tensor, cfg) -> tuple[Tensor, Tensor, Tensor]:
    """Fused per-group rows ``[q heads of the group, k, v]`` -> (q ``[nq*d, ...]``, k, v ``[ng*d, ...]``)."""
    return qkv_part(t, cfg, 0), qkv_part(t, cfg, 1), qkv_part(t, cfg, 2)


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, cfg) -> Tensor:
    """Inverse of :func:`split_qkv`."""
    ng, d = cfg.query_groups, cfg.head_dim
    r = cfg.num_attention_heads // ng
    rest = tuple(q.shape[1:])
    parts = [q.reshape(ng, r, d, *rest), k.reshape(ng, 1, d, *rest), v.reshape(ng, 1, d, *rest)]
    return torch.cat(parts, dim=1).reshape(ng * (r + 2) * d, *rest)


def _qkv(cfg, which: int) -> Callable[[Tensor], Tensor]:
    return functools.partial(qkv_part, cfg=cfg, which=which)


def _half(which: int) -> Callable[[Tensor], Tensor]:
    """``fc1 = [gate; up]`` -> gate (0) or up (1)."""
    return lambda t: t.chunk(2, dim=0)[which]


def _zeros_like_rows(t: Tensor) -> Tensor:
    """A zero bias for the weight ``t`` (one entry per row)."""
    return t.new_zeros(t.shape[0])


def _shared_fields(cfg, vocab: int, ids: SpecialIds, dtype: torch.dtype) -> dict:
    """The Hugging Face config fields every exported architecture takes from ``cfg`` alike."""
    return dict(
        vocab_size=vocab,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.seq_length,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        attention_dropout=cfg.attention_dropout,
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        dtype=dtype,
    )


# ---------------------------------------------------------------------------------------- Llama
def _llama_refusal(cfg) -> Optional[str]:
    if cfg.normalization != "RMSNorm" or cfg.activation != "swiglu":
        return "Llama needs RMSNorm + SwiGLU"
    return None


def _llama_config(cfg, vocab: int, ids: SpecialIds, dtype: torch.dtype):
    return transformers.LlamaConfig(
        **_shared_fields(cfg, vocab, ids, dtype),
        num_key_value_heads=cfg.query_groups,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.norm_eps,
        rope_theta=float(cfg.rotary_base),
        attention_bias=cfg.bias,
        mlp_bias=cfg.bias,
    )


def _llama_tensors(cfg, layers: int) -> dict[str, Piece]:
    out = {"model.embed_tokens.weight": Piece(R.EMBEDDING), "model.norm.weight": Piece(R.FINAL_NORM_WEIGHT)}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = Piece(R.OUTPUT)
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "self_attn.q_proj.weight": Piece(R.QKV_WEIGHT, i, _qkv(cfg, 0)),
                p + "self_attn.k_proj.weight": Piece(R.QKV_WEIGHT, i, _qkv(cfg, 1)),
                p + "self_attn.v_proj.weight": Piece(R.QKV_WEIGHT, i, _qkv(cfg, 2)),
                p + "self_attn.o_proj.weight": Piece(R.PROJ_WEIGHT, i),
                p + "mlp.gate_proj.weight": Piece(R.FC1_WEIGHT, i, _half(0)),
                p + "mlp.up_proj.weight": Piece(R.FC1_WEIGHT, i, _half(1)),
                p + "mlp.down_proj.weight": Piece(R.FC2_WEIGHT, i),
                p + "input_layernorm.weight": Piece(R.NORM1_WEIGHT, i),
                p + "post_attention_layernorm.weight": Piece(R.NORM2_WEIGHT, i),
            }
        )
        if cfg.bias:
            out.update(
                {
                    p + "self_attn.q_proj.bias": Piece(R.QKV_BIAS, i, _qkv(cfg, 0)),
                    p + "self_attn.k_proj.bias": Piece(R.QKV_BIAS, i, _qkv(cfg, 1)),
                    p + "self_attn.v_proj.bias": Piece(R.QKV_BIAS, i, _qkv(cfg, 2)),
                    p + "self_attn.o_proj.bias": Piece(R.PROJ_BIAS, i),
                    p + "mlp.gate_proj.bias": Piece(R.FC1_BIAS, i, _half(0)),
                    p + "mlp.up_proj.bias": Piece(R.FC1_BIAS, i, _half(1)),
                    p + "mlp.down_proj.bias": Piece(R.FC2_BIAS, i),
                }
            )
    return out


# ------------------------------------------------------------------------------------- GPT-NeoX
def _mha_head_dim_refusal(cfg, arch: str) -> Optional[str]:
    if cfg.hidden_size % cfg.num_attention_heads or cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        return (
            f"{arch} derives the head dim as hidden_size / heads, but the model has kv_channels "
            f"{cfg.head_dim} with hidden_size {cfg.hidden_size} and {cfg.num_attention_heads} heads"
        )
    return None


def _neox_refusal(cfg) -> Optional[str]:
    if cfg.normalization != "LayerNorm" or cfg.activation != "gelu":
        return "GPT-NeoX needs LayerNorm + GELU"
    return _mha_head_dim_refusal(cfg, "GPT-NeoX")


def _neox_config(cfg, vocab: int, ids: SpecialIds, dtype: torch.dtype):
    return transformers.GPTNeoXConfig(
        **_shared_fields(cfg, vocab, ids, dtype),
        hidden_act="gelu",
        rotary_pct=1.0,
        rotary_emb_base=cfg.rotary_base,
        layer_norm_eps=cfg.norm_eps,
        use_parallel_residual=False,
        attention_bias=cfg.bias,
        hidden_dropout=cfg.hidden_dropout,
    )


def _neox_qkv(t: Tensor, cfg) -> Tensor:
    """Per head ``[q, k, v]`` rows; a head's k/v are its group's (repeated for GQA)."""
    nq, ng, d = cfg.num_attention_heads, cfg.query_groups, cfg.head_dim
    q, k, v = split_qkv(t, cfg)
    rest = tuple(t.shape[1:])
    group = torch.arange(nq) // (nq // ng)
    heads = torch.stack([q.reshape(nq, d, *rest), k.reshape(ng, d, *rest)[group], v.reshape(ng, d, *rest)[group]], 1)
    return heads.reshape(nq * 3 * d, *rest)


def _neox_tensors(cfg, layers: int) -> dict[str, Piece]:
    out = {
        "gpt_neox.embed_in.weight": Piece(R.EMBEDDING),
        "gpt_neox.final_layer_norm.weight": Piece(R.FINAL_NORM_WEIGHT),
        "gpt_neox.final_layer_norm.bias": Piece(R.FINAL_NORM_BIAS),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = Piece(R.OUTPUT)
    qkv = functools.partial(_neox_qkv, cfg=cfg)
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        out.update(
            {
                p + "input_layernorm.weight": Piece(R.NORM1_WEIGHT, i),
                p + "input_layernorm.bias": Piece(R.NORM1_BIAS, i),
                p + "post_attention_layernorm.weight": Piece(R.NORM2_WEIGHT, i),
                p + "post_attention_layernorm.bias": Piece(R.NORM2_BIAS, i),
                p + "attention.query_key_value.weight": Piece(R.QKV_WEIGHT, i, qkv),
                p + "attention.dense.weight": Piece(R.PROJ_WEIGHT, i),
                p + "mlp.dense_h_to_4h.weight": Piece(R.FC1_WEIGHT, i),
            }
        )
        if not cfg.bias:  # GPT-NeoX's MLP always has biases; zeros compute the same function
            out[p + "mlp.dense_h_to_4h.bias"] = Piece(R.FC1_WEIGHT, i, _zeros_like_rows)
        out[p + "mlp.dense_4h_to_h.weight"] = Piece(R.FC2_WEIGHT, i)
        if not cfg.bias:
            out[p + "mlp.dense_4h_to_h.bias"] = Piece(R.FC2_WEIGHT, i, _zeros_like_rows)
        else:
            out.update(
                {
                    p + "attention.query_key_value.bias": Piece(R.QKV_BIAS, i, qkv),
                    p + "attention.dense.bias": Piece(R.PROJ_BIAS, i),
                    p + "mlp.dense_h_to_4h.bias": Piece(R.FC1_BIAS, i),
                    p + "mlp.dense_4h_to_h.bias": Piece(R.FC2_BIAS, i),
                }
            )
    return out


# -------------------------------------------------------------------------------------- StableLM
def _stablelm_refusal(cfg) -> Optional[str]:
    if cfg.normalization != "LayerNorm" or cfg.activation != "swiglu":
        return "StableLM needs LayerNorm + SwiGLU"
    if cfg.bias:
        return "StableLM has no output-projection or MLP biases (model.bias: true)"
    return _mha_head_dim_refusal(cfg, "StableLM")


def _stablelm_config(cfg, vocab: int, ids: SpecialIds, dtype: torch.dtype):
    return transformers.StableLmConfig(
        **_shared_fields(cfg, vocab, ids, dtype),
        num_key_value_heads=cfg.query_groups,
        hidden_act="silu",
        layer_norm_eps=cfg.norm_eps,
        rope_theta=float(cfg.rotary_base),
        partial_rotary_factor=1.0,
        use_qkv_bias=False,
        qk_layernorm=False,
        use_parallel_residual=False,
        hidden_dropout=cfg.hidden_dropout,
    )


def _stablelm_tensors(cfg, layers: int) -> dict[str, Piece]:
    out = {
        "model.embed_tokens.weight": Piece(R.EMBEDDING),
        "model.norm.weight": Piece(R.FINAL_NORM_WEIGHT),
        "model.norm.bias": Piece(R.FINAL_NORM_BIAS),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = Piece(R.OUTPUT)
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "self_attn.q_proj.weight": Piece(R.QKV_WEIGHT, i, _qkv(cfg, 0)),
                p + "self_attn.k_proj.weight": Piece(R.QKV_WEIGHT, i, _qkv(cfg, 1)),
                p + "self_attn.v_proj.weight": Piece(R.QKV_WEIGHT, i, _qkv(cfg, 2)),
                p + "self_attn.o_proj.weight": Piece(R.PROJ_WEIGHT, i),
                p + "mlp.gate_proj.weight": Piece(R.FC1_WEIGHT, i, _half(0)),
                p + "mlp.up_proj.weight": Piece(R.FC1_WEIGHT, i, _half(1)),
                p + "mlp.down_proj.weight": Piece(R.FC2_WEIGHT, i),
                p + "input_layernorm.weight": Piece(R.NORM1_WEIGHT, i),
                p + "input_layernorm.bias": Piece(R.NORM1_BIAS, i),
                p + "post_attention_layernorm.weight": Piece(R.NORM2_WEIGHT, i),
                p + "post_attention_layernorm.bias": Piece(R.NORM2_BIAS, i),
            }
        )
    return out


def _transformers_class(name: str) -> Callable[[], type]:
    def get() -> type:

        return getattr(transformers, name)

    return get


@dataclass(frozen=True)
class Architecture:
    """One transformers architecture: when it fits, its config, the export tensor mapping, its class,
    and whether the muP multipliers are folded into the weights (standard architectures have none)."""

    name: str
    class_name: str
    refusal: Callable[..., Optional[str]]
    config: Callable[..., object]
    #: ``tensors(cfg, layers)``: the exported tensors by name, each a :class:`Piece` of one logical tensor
    tensors: Callable[..., dict[str, Piece]]
    model_class: Callable[[], type]
    folds_multipliers: bool = True
    #: needs ``trust_remote_code`` (its code is written into the export)
    remote_code: bool = False


ARCHITECTURES = (
    Architecture(
        "llama",
        "LlamaForCausalLM",
        _llama_refusal,
        _llama_config,
        _llama_tensors,
        _transformers_class("LlamaForCausalLM"),
    ),
    Architecture(
        "gpt_neox",
        "GPTNeoXForCausalLM",
        _neox_refusal,
        _neox_config,
        _neox_tensors,
        _transformers_class("GPTNeoXForCausalLM"),
    ),
    Architecture(
        "stablelm",
        "StableLmForCausalLM",
        _stablelm_refusal,
        _stablelm_config,
        _stablelm_tensors,
        _transformers_class("StableLmForCausalLM"),
    ),
)


def _flm() -> Architecture:

    return Architecture(
        "flm",
        flm_arch.CLASS_NAME,
        lambda cfg: None,
        flm_arch.flm_config,
        flm_arch.flm_tensors,
        flm_arch.model_class,
        folds_multipliers=False,
        remote_code=True,
    )


XPOS_REFUSAL = (
    "position_embedding 'xpos' has no standard transformers architecture: xPos scales queries and keys by a "
    "per-position factor that none of the standard models (Llama, GPT-NeoX, StableLM) computes. Export it with "
    "--architecture flm (or auto), which writes the project's own model code (trust_remote_code), or evaluate "
    "it with `flm iq --model flm --checkpoint CKPT`"
)

CHOICES = ("auto", "standard", "flm")


def select_architecture(cfg, choice: str = "auto") -> Architecture:
    """The architecture to export model config ``cfg`` with.

    ``standard``: the standard transformers architecture that computes the variant exactly
    (HFInteropError listing why each candidate does not fit when none does); ``flm``: the project's
    own model code (:mod:`training.hf.flm_arch`), which computes every variant; ``auto``: the
    standard one when there is one, else ``flm``."""
    if choice not in CHOICES:
        raise HFInteropError(f"--architecture {choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "flm":
        return _flm()
    try:
        return _standard(cfg)
    except HFInteropError:
        if choice == "auto":
            return _flm()
        raise


def _standard(cfg) -> Architecture:
    if cfg.position_embedding != "rope":
        raise HFInteropError(XPOS_REFUSAL)
    reasons = []
    for arch in ARCHITECTURES:
        reason = arch.refusal(cfg)
        if reason is None:
            return arch
        reasons.append(f"{arch.class_name}: {reason}")
    raise HFInteropError(
        f"no standard transformers architecture computes the variant {cfg.normalization} + {cfg.activation}"
        f"{' + bias' if cfg.bias else ''} (head dim {cfg.head_dim}) exactly: "
        + "; ".join(reasons)
        + ". Supported: RMSNorm + swiglu (Llama), LayerNorm + gelu (GPT-NeoX), LayerNorm + swiglu "
        "without bias (StableLM); export with --architecture flm (or auto) to write the project's own model code"
    )


#: names older transformers releases use for the same tensor
_ALIASES = {"lm_head.weight": ("embed_out.weight",)}


def check_against_model(arch: Architecture, hf_config, tensors: dict[str, Shaped]) -> dict[str, Shaped]:
    """Match ``tensors`` (anything with a ``shape``: tensors, or the planned tensors of an export) to
    the parameter names and shapes of the installed transformers' model (built on the meta device, no
    memory). Returns ``tensors`` renamed to the installed names; HFInteropError if anything is
    missing, unexpected or of another shape."""

    cls = arch.model_class()
    with torch.device("meta"):
        model = cls(hf_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    renamed = {}
    for key, value in tensors.items():
        if key not in expected:
            key = next((a for a in _ALIASES.get(key, ()) if a in expected), key)
        renamed[key] = value
    tied = {"lm_head.weight", "embed_out.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    missing = sorted(set(expected) - set(renamed) - tied)
    unexpected = sorted(set(renamed) - set(expected))
    wrong = sorted(k for k in set(renamed) & set(expected) if tuple(renamed[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise HFInteropError(
            f"the installed transformers {transformers.__version__} {arch.class_name} does not match the export "
            f"mapping: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes "
            f"{[(k, tuple(renamed[k].shape), expected[k]) for k in wrong[:3]]}; this release is not supported"
        )
    return renamed
