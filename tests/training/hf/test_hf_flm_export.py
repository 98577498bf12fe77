"""FLM-shaped export: ``flm export-hf`` writes the project's own model code (``modeling_flm.py`` +
``configuration_flm.py``, ``trust_remote_code``) for xPos and every other block variant; transformers
loads it, its logits equal the project's reference model (float32 1e-5, float64 1e-10, relative to
1 + max|logit|), it generates with a KV cache (same tokens as the project model's greedy decoding,
also left-padded in a batch), and a directory whose code is not the project's is not run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.training.hf.hf_helpers import FLM_VARIANTS, flm_variant, random_state, write_checkpoint
from training.hf.compare import compare, load_hf_model, project_logits, random_tokens
from training.hf.errors import HFInteropError
from training.hf.export import export_checkpoint
from training.hf.remote import DIR as CODE_DIR

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _export(tmp_path, name, dtype=torch.float32, seed=0, **kwargs):
    cfg = flm_variant(name)
    state = random_state(cfg, seed=seed, dtype=dtype)
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, state)
    report = export_checkpoint(ckpt, tmp_path / "hf", no_tokenizer=True, architecture=FLM_VARIANTS[name][2], **kwargs)
    return cfg, state, report


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", list(FLM_VARIANTS))
def test_flm_export_matches_project_model(name, dtype, tmp_path):
    import transformers

    cfg, state, report = _export(tmp_path, name, dtype, seed=list(FLM_VARIANTS).index(name))
    assert report.architecture == "FLMForCausalLM"
    out = tmp_path / "hf"
    for f in ("configuration_flm.py", "modeling_flm.py"):
        assert (out / f).read_bytes() == (CODE_DIR / f).read_bytes()
    hf_cfg = transformers.AutoConfig.from_pretrained(str(out), trust_remote_code=True)
    assert hf_cfg.model_type == "flm" and hf_cfg.architectures == ["FLMForCausalLM"]
    assert (hf_cfg.position_embedding, hf_cfg.normalization, hf_cfg.activation, hf_cfg.bias) == (
        cfg.position_embedding,
        cfg.normalization,
        cfg.activation,
        cfg.bias,
    )
    assert (hf_cfg.input_multiplier, hf_cfg.output_multiplier) == (1.5, 0.7)  # muP kept, not folded
    assert hf_cfg.tie_word_embeddings == cfg.tie_embeddings and hf_cfg.vocab_size == cfg.vocab_size
    model = load_hf_model(out, dtype)
    assert next(model.parameters()).dtype == dtype
    if cfg.tie_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for length in (cfg.seq_length, 13):  # the xPos offset cancels: any length, not only seq_length
        tokens = random_tokens(cfg.vocab_size, length, batch=3, seed=1)
        result = compare(cfg, state, model, tokens)
        assert result.max_abs_dlogit <= TOL[dtype] * (1 + result.max_abs_logit), result.summary()
        assert result.max_abs_logit > 1.0
    record = json.loads((out / "flm_export.json").read_text())
    assert record["architecture"] == "FLMForCausalLM" and record["folded"]["padded_rows_dropped"] == 12


def test_xpos_is_not_rope(tmp_path):
    """The export computes xPos, not plain RoPE: the rope model of the same weights differs."""
    cfg, state, _ = _export(tmp_path, "xpos-neox-gqa-tied-bias")
    tokens = random_tokens(cfg.vocab_size, cfg.seq_length, batch=2, seed=2)
    with torch.no_grad():
        ours = load_hf_model(tmp_path / "hf", torch.float32)(input_ids=tokens).logits
    rope = project_logits(dataclasses.replace(cfg, position_embedding="rope"), state, tokens)
    assert (ours - rope).abs().max() > 1e-2


def _greedy_reference(cfg, state, prompt, steps):
    seq = list(prompt)
    for _ in range(steps):
        logits = project_logits(cfg, state, torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_generation_with_kv_cache_equals_project_greedy_decoding(tmp_path):
    cfg, state, _ = _export(tmp_path, "xpos-neox-gqa-tied-bias", seed=3)
    model = load_hf_model(tmp_path / "hf", torch.float32)
    prompts = [random_tokens(cfg.vocab_size, n, batch=1, seed=10 + n)[0].tolist() for n in (9, 5)]
    expected = [_greedy_reference(cfg, state, p, 12) for p in prompts]
    assert len({tuple(e) for e in expected}) == 2 and all(len(set(e)) > 2 for e in expected)
    with torch.no_grad():
        for prompt, want in zip(prompts, expected):
            ids = torch.tensor([prompt])
            cached = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
            assert cached[0, len(prompt) :].tolist() == want
        # a left-padded batch: attention mask and position ids from generate
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        batch = model.generate(
            ids, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0
        )
    assert [row[width:].tolist() for row in batch] == expected


def test_foreign_code_is_not_run_and_cli_check(tmp_path, capsys):
    from training.cli import main

    cfg = flm_variant("xpos-neox-gqa-tied-bias")
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, random_state(cfg, 4))
    assert main(["export-hf", str(ckpt), str(tmp_path / "hf"), "--no-tokenizer", "--check"]) == 0
    out = capsys.readouterr().out
    assert "FLMForCausalLM" in out and "[OK]" in out
    assert main(["hf-compare", str(ckpt), str(tmp_path / "hf"), "--dtype", "float64"]) == 0
    assert "[OK]" in capsys.readouterr().out
    code = tmp_path / "hf" / "modeling_flm.py"
    code.write_text(code.read_text() + "\nprint('not the project code')\n")
    with pytest.raises(HFInteropError, match="modeling_flm.py differ from this project's; refusing to run"):
        load_hf_model(tmp_path / "hf", torch.float32)
    assert main(["hf-compare", str(ckpt), str(tmp_path / "hf")]) == 2
    assert "refusing to run that code" in capsys.readouterr().err
    from eval_iq.cli import main as iq_main

    assert (
        iq_main(
            [
                "--model",
                "hf",
                "--model-path",
                str(tmp_path / "hf"),
                "--subtasks",
                "counting",
                "--output-dir",
                str(tmp_path / "iq"),
            ]
        )
        == 2
    )
    assert "flm iq: error:" in (err := capsys.readouterr().err) and "refusing to run that code" in err
