"""``flm export-hf``: every supported variant loads in transformers and computes the project model's
logits (float32: 1e-5·(1 + max|logit|); float64: 1e-10), refusals are clear and leave nothing behind.

The project side is ``reference_logits`` on the logical state (tested equal to megatron in
tests/training/engine/model/test_reference_model.py); checkpoints saved under TP2 / PP2 are in test_hf_layouts.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.training.hf.hf_helpers import ARCH_OF, VARIANTS, random_state, variant, write_checkpoint
from training.hf.compare import compare, load_hf_model, project_logits, random_tokens
from training.hf.errors import HFInteropError
from training.hf.export import export_checkpoint

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_export_matches_project_model(name, dtype, tmp_path, sp_tokenizer):
    import transformers

    cfg = variant(name)
    state = random_state(cfg, seed=list(VARIANTS).index(name), dtype=dtype)
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, state)
    report = export_checkpoint(ckpt, tmp_path / "hf", tokenizer=sp_tokenizer)
    assert report.architecture == ARCH_OF[name.split("-")[0]]
    hf_cfg = transformers.AutoConfig.from_pretrained(str(tmp_path / "hf"))
    assert hf_cfg.architectures == [report.architecture] and hf_cfg.vocab_size == cfg.vocab_size
    assert hf_cfg.tie_word_embeddings == cfg.tie_embeddings
    assert (hf_cfg.bos_token_id, hf_cfg.eos_token_id, hf_cfg.pad_token_id) == (1, 2, 3)
    model = load_hf_model(tmp_path / "hf", dtype)
    assert next(model.parameters()).dtype == dtype
    tokens = random_tokens(cfg.vocab_size, cfg.seq_length, batch=3, seed=1)
    result = compare(cfg, state, model, tokens)
    assert result.max_abs_dlogit <= TOL[dtype] * (1 + result.max_abs_logit), result.summary()
    assert result.max_abs_logit > 1.0  # non-trivial logits
    # the padded rows are gone, and the model predicts real tokens (not all-equal logits)
    logits = project_logits(cfg, state, tokens)
    assert logits.shape[-1] == cfg.vocab_size and logits.std() > 0.1
    record = json.loads((tmp_path / "hf" / "flm_export.json").read_text())
    assert record["folded"]["padded_rows_dropped"] == 12 and record["tokenizer"]["vocab_size"] == 500
    if cfg.tie_embeddings:  # mu_in != mu_out with tied embeddings folds into the final norm
        assert record["folded"]["final_norm_scaled_by"] == pytest.approx(0.7 / 1.5)


def test_exported_tokenizer_encodes_like_project_tokenizer(tmp_path, sp_tokenizer):
    import transformers

    from tests.training.hf.hf_helpers import iq_texts
    from training.data.tokenizer import load_tokenizer

    cfg = variant("llama-gqa-untied")
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, random_state(cfg, 0))
    export_checkpoint(ckpt, tmp_path / "hf", tokenizer=sp_tokenizer)
    hf, ours = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf")), load_tokenizer(sp_tokenizer)
    sample = "\n\n".join(iq_texts(size=3)) + "\nDigits 0123456789, unicode é中😀, tabs\tand  spaces."
    assert hf.encode(sample) == ours.encode(sample) and len(ours.encode(sample)) > 500
    assert hf.model_max_length == cfg.seq_length


def test_sharded_safetensors_and_dtype_conversion(tmp_path):
    cfg = variant("neox-gqa-tied-bias")
    state = random_state(cfg, 3)
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, state)
    report = export_checkpoint(ckpt, tmp_path / "hf", no_tokenizer=True, max_shard_size="20KB", dtype="float64")
    shards = sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
    assert len(shards) > 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards) and report.dtype == "float64"
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    model = load_hf_model(tmp_path / "hf", torch.float64)
    result = compare(cfg, {k: v.double() for k, v in state.items()}, model, random_tokens(cfg.vocab_size, 16))
    assert result.within, result.summary()


def test_refusals_are_clear_and_leave_nothing(tmp_path, sp_tokenizer):
    def refused(cfg, match, state_cfg=None, **kwargs):
        path = tmp_path / f"ck{len(list(tmp_path.iterdir()))}"
        ckpt = write_checkpoint(path, cfg, random_state(state_cfg or cfg, 0), **kwargs.pop("meta", {}))
        out = tmp_path / f"out-{path.name}"
        with pytest.raises(HFInteropError, match=match):
            export_checkpoint(ckpt, out, **{"tokenizer": sp_tokenizer, **kwargs})
        assert not out.exists() and not list(tmp_path.glob(f".out-{path.name}*"))

    llama = variant("llama-gqa-untied")
    # --architecture standard: only a standard transformers architecture (auto falls back to FLM code)
    std = {"architecture": "standard"}
    refused(
        dataclasses.replace(llama, position_embedding="xpos"),
        "xpos.*no standard transformers architecture.*--architecture flm",
        **std,
    )
    refused(dataclasses.replace(llama, activation="gelu"), r"RMSNorm \+ gelu.*Llama needs RMSNorm \+ SwiGLU", **std)
    refused(variant("stablelm-gqa-untied", bias=True), "StableLM has no output-projection or MLP biases", **std)
    refused(
        variant("neox-untied-nobias", kv_channels=12), "GPT-NeoX derives the head dim as hidden_size / heads", **std
    )
    refused(llama, "--architecture 'gpt2' is not one of auto, standard, flm", architecture="gpt2")
    refused(
        dataclasses.replace(variant("neox-gqa-tied-bias"), input_multiplier=0.0),
        "input_multiplier is 0 with tied embeddings",
    )
    masks = {"ramp_steps": 10, "steps_done": 4, "ffn_old": 24, "ffn_new": 48}
    refused(
        llama,
        r"MSG masks are still ramping \(c = 0.400 after 4 of 10 steps\).*Train at least 6 more steps",
        meta={"growth_masks": masks},
    )
    refused(llama, "trained on mock data.*--tokenizer PATH.*--no-tokenizer", tokenizer=None)
    refused(
        dataclasses.replace(llama, vocab_size=480),
        "has 500 ids but .* has model.vocab_size 480",
        state_cfg=dataclasses.replace(llama, vocab_size=480),
    )
    refused(llama, "--dtype 'int8' is not one of", dtype="int8")
    refused(llama, "--max-shard-size 'lots' is not a size", max_shard_size="lots")
    # a finished ramp is the plain grown model: exported
    ckpt = write_checkpoint(
        tmp_path / "done",
        llama,
        random_state(llama, 0),
        growth_masks={"ramp_steps": 10, "steps_done": 10, "ffn_old": 24, "ffn_new": 48},
    )
    export_checkpoint(ckpt, tmp_path / "done-hf", tokenizer=sp_tokenizer)
    with pytest.raises(HFInteropError, match="refusing to overwrite"):
        export_checkpoint(ckpt, tmp_path / "done-hf", tokenizer=sp_tokenizer)


def test_tokenizer_found_through_the_run_data_config(tmp_path, sp_tokenizer):
    cfg = variant("llama-gqa-untied")
    data = {
        "kind": "prepared",
        "datasets": [{"path": str(tmp_path / "no-such-dataset"), "weight": 1.0}],
        "tokenizer": str(sp_tokenizer),
    }
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, random_state(cfg, 0), data=data)
    report = export_checkpoint(ckpt, tmp_path / "hf")
    assert report.tokenizer["source"] == str(sp_tokenizer / "tokenizer.model")
    data = {"kind": "prepared", "datasets": [{"path": str(tmp_path / "no-such-dataset"), "weight": 1.0}]}
    ckpt = write_checkpoint(tmp_path / "ckpt2", cfg, random_state(cfg, 0), data=data)
    with pytest.raises(HFInteropError, match="copy inside the dataset .*no-such-dataset.*tokenizer not found"):
        export_checkpoint(ckpt, tmp_path / "hf2")


def test_cli_export_check_and_compare(tmp_path, sp_tokenizer, capsys):
    from safetensors.torch import load_file, save_file

    from training.cli import main

    cfg = variant("llama-tied-bias-kvchannels")
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, random_state(cfg, 5))
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf"), "--tokenizer", str(sp_tokenizer), "--check"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out and "max |Δlogit| =" in out and "[OK]" in out
    assert json.loads((tmp_path / "hf" / "flm_export.json").read_text())["check"]["within"] is True
    assert main(["hf-compare", str(ckpt), str(tmp_path / "hf"), "--dtype", "float64"]) == 0
    assert "float64" in capsys.readouterr().out
    # a changed weight is caught by the round-trip check (exit 1)
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] += 0.5
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    assert main(["hf-compare", str(ckpt), str(tmp_path / "hf")]) == 1
    assert "[MISMATCH]" in capsys.readouterr().out
    assert main(["export-hf", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
    assert "flm export-hf: error: checkpoint path" in capsys.readouterr().err


@pytest.mark.parametrize("name", [*VARIANTS, "xpos-flm"])
def test_mup_export_folds_attention_scale_and_readout(name, tmp_path):
    """μP (m = 32 / 8 = 4, attention multiplier 2.5): every architecture (the FLM code too) gets an
    exact standard-parametrisation model: query rows x multiplier / sqrt(d), logits x output_multiplier / m."""
    from training.config import MuPConfig

    if name == "xpos-flm":
        cfg = variant("neox-gqa-tied-bias", position_embedding="xpos", xpos_scale_base=16.0)
    else:
        cfg = variant(name)
    cfg = dataclasses.replace(cfg, mup=MuPConfig(base_width=8, attention_multiplier=2.5))
    state = random_state(cfg, seed=4, dtype=torch.float64)
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, state)
    report = export_checkpoint(ckpt, tmp_path / "hf", no_tokenizer=True)
    assert report.architecture == ARCH_OF.get(name.split("-")[0], "FLMForCausalLM")
    tokens = random_tokens(cfg.vocab_size, cfg.seq_length, batch=3, seed=1)
    result = compare(cfg, state, load_hf_model(tmp_path / "hf", torch.float64), tokens)
    assert result.max_abs_dlogit <= TOL[torch.float64] * (1 + result.max_abs_logit), result.summary()
    standard = project_logits(dataclasses.replace(cfg, mup=None), state, tokens)
    assert (project_logits(cfg, state, tokens) - standard).abs().max() > 0.1  # μP is another function
    folded = json.loads((tmp_path / "hf" / "flm_export.json").read_text())["folded"]
    assert folded["mup"] == {"base_width": 8, "attention_multiplier": 2.5} and folded["width_multiplier"] == 4.0
    assert folded["output_multiplier"] == folded["readout_multiplier"] == pytest.approx(0.7 / 4)
    assert folded["query_scaled_by"] == pytest.approx(2.5 / cfg.head_dim**0.5)
