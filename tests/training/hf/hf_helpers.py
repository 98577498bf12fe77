"""Helpers for the Hugging Face interoperability tests: variants, random weights, checkpoints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import torch

from growth import roles as R
from growth.shape import ModelShape
from training.config import ModelConfig, RunConfig
from training.config_base import to_dict

#: tokenizer vocabulary of the tests' sentencepiece model; padded to 512 rows (12 padded rows)
VOCAB = 500

BASE = ModelConfig(
    num_layers=2,
    hidden_size=32,
    ffn_hidden_size=48,
    num_attention_heads=4,
    vocab_size=VOCAB,
    make_vocab_size_divisible_by=64,
    seq_length=32,
    input_multiplier=1.5,
    output_multiplier=0.7,
    norm_eps=1e-5,
    rotary_base=5000,
)

#: one entry per supported architecture and its corner cases: GQA, tied (with mu_in != mu_out, which
#: folds into the final norm), untied, biases, kv_channels != hidden / heads
VARIANTS: dict[str, dict[str, Any]] = {
    "llama-gqa-untied": dict(
        normalization="RMSNorm", activation="swiglu", num_query_groups=2, tie_embeddings=False, bias=False
    ),
    "llama-tied-bias-kvchannels": dict(
        normalization="RMSNorm", activation="swiglu", tie_embeddings=True, bias=True, kv_channels=12
    ),
    "neox-gqa-tied-bias": dict(
        normalization="LayerNorm", activation="gelu", num_query_groups=2, tie_embeddings=True, bias=True
    ),
    "neox-untied-nobias": dict(normalization="LayerNorm", activation="gelu", tie_embeddings=False, bias=False),
    "stablelm-gqa-untied": dict(
        normalization="LayerNorm", activation="swiglu", num_query_groups=2, tie_embeddings=False, bias=False
    ),
}
ARCH_OF = {"llama": "LlamaForCausalLM", "neox": "GPTNeoXForCausalLM", "stablelm": "StableLmForCausalLM"}


def variant(name: str, **extra: Any) -> ModelConfig:
    return dataclasses.replace(BASE, **{**VARIANTS[name], **extra})


#: (base variant, changes, --architecture): xPos (FLM-101B: LayerNorm + GELU + bias), the
#: LayerNorm + GELU + bias variant forced to FLM code, and variants no standard architecture computes
FLM_VARIANTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "xpos-neox-gqa-tied-bias": ("neox-gqa-tied-bias", dict(position_embedding="xpos", xpos_scale_base=16.0), "auto"),
    "xpos-llama-untied-kvchannels": (
        "llama-gqa-untied",
        dict(position_embedding="xpos", xpos_scale_base=8.0, kv_channels=12),
        "auto",
    ),
    "neox-untied-bias-as-flm": ("neox-untied-nobias", dict(bias=True), "flm"),
    "rmsnorm-gelu-tied": ("llama-tied-bias-kvchannels", dict(activation="gelu"), "auto"),
    "layernorm-swiglu-bias": ("stablelm-gqa-untied", dict(bias=True), "auto"),
}


def flm_variant(name: str, **extra: Any) -> ModelConfig:
    base, changes, _ = FLM_VARIANTS[name]
    return variant(base, **{**changes, **extra})


def random_state(
    cfg: ModelConfig, seed: int, dtype: torch.dtype = torch.float32, tp: int = 1
) -> dict[str, torch.Tensor]:
    """Random logical weights: norm gains around 1, everything else (biases included) non-zero."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in R.logical_shapes(cfg, ModelShape.from_model_config(cfg, tp)).items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        out[key] = (1 + 0.3 * noise if "norm" in key and key.endswith("weight") else 0.2 * noise).to(dtype)
    return out


def write_checkpoint(
    path: Path,
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    data: Optional[dict[str, Any]] = None,
    output_dir: Optional[Path] = None,
    **meta: Any,
) -> Path:
    """A logical checkpoint of ``state`` whose run config has model ``cfg`` (and data section ``data``,
    ``output_dir``)."""
    from training.checkpoint.logical import write_logical
    from training.config_base import from_dict

    run = to_dict(RunConfig(model=cfg))
    if data is not None:
        run["data"] = data
    if output_dir is not None:
        run["output_dir"] = str(output_dir)
    from_dict(RunConfig, run)  # validate
    return write_logical(path, state, {"config": run, "step": 0, "consumed_samples": 0, "adam_step": 0, **meta})


def iq_texts(size: int = 30) -> list[str]:
    """English text shaped like the IQ benchmark's prompts (the tokenizer and the tiny models see it)."""
    from eval_iq.generate import generate

    names = ("counting", "replace_lowercase", "head_tail", "single_supporting_fact", "multi_key_retrieval")
    return [inst["prompt"] + " " + inst["answer"] for n in names for inst in generate(n, size=size)]


def train_sentencepiece(out: Path, vocab_size: int = VOCAB, model_type: str = "bpe") -> Path:
    from training.data.ingest import CorpusSpec
    from training.data.sentencepiece_tokenizer import TokenizerSpec, train_tokenizer

    corpus = out.parent / f"{out.name}-corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in iq_texts()))
    train_tokenizer(
        CorpusSpec(inputs=(str(corpus),)),
        out,
        TokenizerSpec(vocab_size=vocab_size, model_type=model_type),
        num_threads=1,
    )
    return out


def max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / (1 + max |a|)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / (1 + a.abs().max()))


def bpe_tokenizer(out: Path, vocab_size: int = 400) -> Path:
    """A byte-level BPE ``tokenizer.json`` (+ ``tokenizer_config.json``) trained offline on IQ-style
    and multilingual text with the ``tokenizers`` library (how most models since 2023 ship)."""
    from tests.training.data.data_helpers import MULTILINGUAL, write_hf_bpe_tokenizer

    return write_hf_bpe_tokenizer(out, iq_texts() + [MULTILINGUAL] * 3, vocab_size)


#: transformers config class and defaults per ``model_type`` (tiny shapes; GQA 4 heads / 2 groups)
HF_TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)


def random_hf_model(
    out: Path, model_type: str = "llama", tokenizer: Optional[Path] = None, seed: int = 0, **config: Any
) -> Path:
    """A random ``<model_type>ForCausalLM`` saved with ``save_pretrained`` (safetensors) into ``out``,
    with the files of ``tokenizer`` (a Hugging Face tokenizer directory) copied next to it. Norm gains
    around 1 and weights x5 (biases included): logits of order 1, far from uniform."""
    import shutil

    import transformers

    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[model_type]
    cfg = cls[0](**{**HF_TINY, **config})
    torch.manual_seed(seed)
    model = cls[1](cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.3)
            else:
                p.mul_(5.0)
    model.save_pretrained(str(out))
    if tokenizer is not None:
        for f in tokenizer.iterdir():
            shutil.copyfile(f, out / f.name)
    return out
