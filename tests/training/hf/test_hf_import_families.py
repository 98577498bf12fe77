"""``flm import-hf`` beyond Llama: small random Qwen2 (q/k/v biases), Mistral (sliding window) and
Llama models built offline with transformers import exactly (logits 1e-5 float32, 1e-10 float64),
export back to a transformers model of the same function, and Llama 3-style RoPE scaling is refused
with one line naming the config.json field."""

from __future__ import annotations

import json

import pytest
import torch

from tests.training.hf.hf_helpers import bpe_tokenizer, max_rel_error, random_hf_model
from training.hf.compare import compare, load_hf_model, random_tokens
from training.hf.errors import HFInteropError
from training.hf.export import export_checkpoint
from training.hf.importer import import_hf


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return bpe_tokenizer(tmp_path_factory.mktemp("bpe") / "tok")


def _state(ckpt):
    from growth import roles as R
    from training.checkpoint import read_meta
    from training.checkpoint.logical import read_logical
    from training.config import ModelConfig
    from training.config_base import from_dict

    cfg = from_dict(ModelConfig, read_meta(ckpt)["config"]["model"])
    params, _ = read_logical(ckpt)
    return cfg, {k: params[k] for k in R.logical_keys(cfg)}


def _round_trip(src, tmp_path, seq, tokenizer=True):
    """Import ``src`` (float32 and float64), compare with transformers, export back and compare again."""
    report = import_hf(src, tmp_path / "ck", check=True, no_tokenizer=not tokenizer)
    assert report.check.within, report.check.summary()
    cfg, state = _state(tmp_path / "ck")
    tokens = random_tokens(cfg.vocab_size, seq, batch=3, seed=7)
    fp32 = compare(cfg, state, load_hf_model(src, torch.float32), tokens)
    assert fp32.within and fp32.max_abs_logit > 1.0, fp32.summary()
    import_hf(src, tmp_path / "ck64", dtype="float64", no_tokenizer=True)
    cfg64, state64 = _state(tmp_path / "ck64")
    fp64 = compare(cfg64, state64, load_hf_model(src, torch.float64), tokens)
    assert fp64.within and fp64.tolerance == 1e-10, fp64.summary()
    export_checkpoint(tmp_path / "ck", tmp_path / "back", check=True, no_tokenizer=not tokenizer)
    original, back = load_hf_model(src, torch.float32), load_hf_model(tmp_path / "back", torch.float32)
    with torch.no_grad():
        assert max_rel_error(original(input_ids=tokens).logits, back(input_ids=tokens).logits) <= 1e-5
    return cfg, state


def test_qwen2_qkv_bias(bpe_dir, tmp_path):
    from growth import roles as R
    from training.data.tokenizer import load_tokenizer

    vocab = load_tokenizer(bpe_dir).vocab_size
    # like released Qwen2 models, the embedding has more rows than the tokenizer has ids
    src = random_hf_model(
        tmp_path / "qwen2",
        "qwen2",
        bpe_dir,
        vocab_size=vocab + 48,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    cfg, state = _round_trip(src, tmp_path, 48)
    assert cfg.bias and cfg.tie_embeddings and cfg.query_groups == 2 and cfg.rotary_base == 1000000
    assert cfg.vocab_size == vocab + 48
    # its tokenizer prepares training data the imported model accepts
    from tests.training.data.data_helpers import MULTILINGUAL
    from training.config.data import DataConfig, DatasetConfig
    from training.data.build import check_vocab_size
    from training.data.ingest import CorpusSpec
    from training.data.prepare import prepare_dataset

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": MULTILINGUAL}) + "\n")
    prepare_dataset(CorpusSpec(inputs=(str(corpus),)), tmp_path / "ck" / "tokenizer", tmp_path / "data", workers=1)
    check_vocab_size(DataConfig(kind="prepared", datasets=[DatasetConfig(path=str(tmp_path / "data"))]), cfg.vocab_size)
    assert state[R.QKV_BIAS].abs().max() > 0.1  # the real (random, non-zero) q/k/v biases
    assert not state[R.PROJ_BIAS].any() and not state[R.FC1_BIAS].any() and not state[R.FC2_BIAS].any()


def test_mistral_sliding_window_bounds_the_sequence(bpe_dir, tmp_path, capsys):
    from training.data.tokenizer import load_tokenizer

    vocab = load_tokenizer(bpe_dir).vocab_size
    src = random_hf_model(tmp_path / "mistral", "mistral", bpe_dir, vocab_size=vocab, sliding_window=24, head_dim=12)
    cfg, state = _round_trip(src, tmp_path, 24)
    assert cfg.seq_length == 24 and cfg.kv_channels == 12 and not cfg.bias
    # beyond the window transformers' Mistral attends to fewer tokens: a different function
    long = random_tokens(vocab, 40, batch=1, seed=1)
    assert not compare(cfg, state, load_hf_model(src, torch.float32), long).within
    with pytest.raises(HFInteropError, match=r"sliding_window is 24 but --seq-length is 40 .*--seq-length 24 or less"):
        import_hf(src, tmp_path / "long", seq_length=40)
    from training.cli import main

    assert main(["import-hf", str(src), str(tmp_path / "cli"), "--seq-length", "16"]) == 0
    assert "hf tokenizer" in capsys.readouterr().out


def test_llama_with_attention_bias_only(tmp_path):
    src = random_hf_model(tmp_path / "llama", "llama", vocab_size=300, attention_bias=True, mlp_bias=False)
    cfg, state = _round_trip(src, tmp_path, 32, tokenizer=False)
    assert cfg.bias


@pytest.mark.parametrize("spelling", ["rope_parameters", "rope_scaling"])
def test_llama3_rope_scaling_is_refused_naming_the_field(spelling, tmp_path):
    llama3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
        "rope_theta": 500000.0,
    }
    src = random_hf_model(tmp_path / "llama3", "llama", vocab_size=300, rope_parameters=llama3)
    if spelling == "rope_scaling":  # how Llama 3 repositories spell it
        raw = json.loads((src / "config.json").read_text())
        raw["rope_scaling"] = {k: v for k, v in raw.pop("rope_parameters").items() if k != "rope_theta"}
        raw["rope_theta"] = 500000.0
        (src / "config.json").write_text(json.dumps(raw))
    with pytest.raises(HFInteropError) as err:
        import_hf(src, tmp_path / "out", no_tokenizer=True)
    message = str(err.value)
    assert "\n" not in message and f"{spelling}.rope_type is 'llama3' (RoPE scaling, factor 8.0)" in message
    assert "config.json" in message and not (tmp_path / "out").exists()
