"""The FLM architecture of exports: the project's own transformers code (:mod:`training.hf.remote`).

Every block variant the project trains -- xPos, LayerNorm or RMSNorm, GELU or SwiGLU, biases or
not, GQA, any head dim, tied or untied, muP multipliers -- exports as ``FLMForCausalLM``: weights
keep the project's fused layout (QKV rows per query group ``[q heads, k, v]``, ``fc1 = [gate; up]``
for SwiGLU), the multipliers go to ``config.json`` (the model applies them), and the directory gets
``configuration_flm.py`` + ``modeling_flm.py`` (``auto_map``), so
``AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)`` loads and generates with it.

Tensor names (``L`` = layer): ``model.embed_tokens.weight``, ``model.layers.L.input_norm.{weight,bias}``,
``model.layers.L.attn.qkv.{weight,bias}``, ``model.layers.L.attn.proj.{weight,bias}``,
``model.layers.L.post_attention_norm.{weight,bias}``, ``model.layers.L.mlp.fc1.{weight,bias}``,
``model.layers.L.mlp.fc2.{weight,bias}``, ``model.final_norm.{weight,bias}``, ``lm_head.weight``
(untied only); norm biases exist for LayerNorm, linear biases when ``model.bias``.

This project loads a directory with ``trust_remote_code`` only when its two code files are byte
for byte the ones shipped here (:func:`is_project_code`); anything else is refused, so
``flm hf-compare`` never runs code it did not write.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from growth import roles as R
from training.hf import remote
from training.hf.errors import HFInteropError
from training.hf.pieces import Piece
from training.hf.remote.configuration_flm import FLMConfig
from training.hf.remote.modeling_flm import FLMForCausalLM

CLASS_NAME = "FLMForCausalLM"
AUTO_MAP = {"AutoConfig": "configuration_flm.FLMConfig", "AutoModelForCausalLM": "modeling_flm.FLMForCausalLM"}


def flm_config(cfg, vocab: int, ids, dtype: torch.dtype):
    """``FLMConfig`` of the project model config ``cfg`` (``vocab`` rows; special ids ``ids``)."""

    config = FLMConfig(
        vocab_size=vocab,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.query_groups,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.seq_length,
        normalization=cfg.normalization,
        activation=cfg.activation,
        position_embedding=cfg.position_embedding,
        rope_theta=float(cfg.rotary_base),
        xpos_scale_base=float(cfg.xpos_scale_base),
        xpos_offset=cfg.seq_length // 2,
        bias=cfg.bias,
        norm_eps=float(cfg.norm_eps),
        input_multiplier=float(cfg.input_multiplier),
        # the readout multiplier (output_multiplier / m under μP; the attention scale is folded, fold.py)
        output_multiplier=float(cfg.readout_multiplier),
        initializer_range=float(cfg.init_std),
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        dtype=dtype,
    )
    config.auto_map = dict(AUTO_MAP)
    return config


def flm_tensors(cfg, layers: int) -> dict[str, Piece]:
    """Export tensors (names in the module docstring) of the trimmed, *unfolded* export state, each
    one logical tensor as it is (the layout is the project's)."""
    present = set(R.logical_keys(cfg))
    out = {"model.embed_tokens.weight": Piece(R.EMBEDDING), "model.final_norm.weight": Piece(R.FINAL_NORM_WEIGHT)}
    if R.FINAL_NORM_BIAS in present:
        out["model.final_norm.bias"] = Piece(R.FINAL_NORM_BIAS)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = Piece(R.OUTPUT)
    names = {
        R.NORM1_WEIGHT: "input_norm.weight",
        R.NORM1_BIAS: "input_norm.bias",
        R.QKV_WEIGHT: "attn.qkv.weight",
        R.QKV_BIAS: "attn.qkv.bias",
        R.PROJ_WEIGHT: "attn.proj.weight",
        R.PROJ_BIAS: "attn.proj.bias",
        R.NORM2_WEIGHT: "post_attention_norm.weight",
        R.NORM2_BIAS: "post_attention_norm.bias",
        R.FC1_WEIGHT: "mlp.fc1.weight",
        R.FC1_BIAS: "mlp.fc1.bias",
        R.FC2_WEIGHT: "mlp.fc2.weight",
        R.FC2_BIAS: "mlp.fc2.bias",
    }
    for i in range(layers):
        for key, name in names.items():
            if key in present:
                out[f"model.layers.{i}.{name}"] = Piece(key, i)
    return out


def model_class():

    return FLMForCausalLM


def copy_code(out_dir: Path) -> list[str]:
    """Copy the model code files into the export directory ``out_dir``; returns their names."""
    for name in remote.FILES:
        shutil.copyfile(remote.DIR / name, out_dir / name)
    return list(remote.FILES)


def is_flm_dir(hf_dir: Path) -> bool:
    try:
        return json.loads((Path(hf_dir) / "config.json").read_text()).get("model_type") == "flm"
    except (OSError, ValueError):
        return False


def is_project_code(hf_dir: Path) -> bool:
    """Whether ``hf_dir``'s model code files are exactly this project's."""
    hf_dir = Path(hf_dir)
    return all(
        (hf_dir / n).is_file() and (hf_dir / n).read_bytes() == (remote.DIR / n).read_bytes() for n in remote.FILES
    )


def trust_remote_code(hf_dir: Path) -> bool:
    """``trust_remote_code`` for loading ``hf_dir``: True for an FLM export whose code is this
    project's, False for other directories; HFInteropError for an FLM directory with other code."""
    if not is_flm_dir(hf_dir):
        return False
    if not is_project_code(hf_dir):
        raise HFInteropError(
            f"{hf_dir} is an FLM model (model_type: flm) whose {' / '.join(remote.FILES)} differ from this "
            "project's; refusing to run that code. Export again with this version of flm-grow, or load it "
            "yourself with trust_remote_code=True if you trust it"
        )
    return True
