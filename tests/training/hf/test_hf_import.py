"""``flm import-hf``: a tiny random Llama (GQA, tied embeddings, non-trivial norms) saved with
transformers is imported; its logits match transformers (1e-5 float32, 1e-10 float64); the imported
checkpoint trains (``flm train --init-from``: the first loss is transformers' loss on that batch)
and grows with exact operators (logits still match, also after exporting the grown model again);
bad inputs are refused clearly and leave nothing behind."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.helpers import REPO, read_metrics
from tests.training.hf.hf_helpers import VOCAB, max_rel_error
from training.hf.compare import compare, load_hf_model, project_logits, random_tokens
from training.hf.errors import HFInteropError
from training.hf.importer import import_hf

TINY = str(REPO / "configs" / "runs" / "tiny.yaml")
COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "train.eval_interval=1000"]
# exact operators only: hidden x2 by cloning (RMSNorm), ffn and depth by zero-init -> no masks
PLAN = """
new: {layers: 3, hidden: 64, ffn: 128, heads: 4, query_groups: 2, head_dim: 8, vocab: 512}
operators: {hidden: clone, ffn: zero, depth: zero}
depth: {placement: stack, init: copy}
"""


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, sp_tokenizer):
    """A random LlamaForCausalLM (GQA 4 heads / 2 groups, tied) with the project tokenizer, as
    ``save_pretrained`` writes it, plus ``tokenizer.model`` (like Llama repositories ship)."""
    import transformers

    from training.data.tokenizer import load_tokenizer
    from training.hf.tokenizer import save_hf_tokenizer

    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.3)
            else:
                p.mul_(5.0)  # logits of order 1, far from uniform
    out = tmp_path_factory.mktemp("llama") / "tiny-llama"
    model.save_pretrained(str(out))
    save_hf_tokenizer(load_tokenizer(sp_tokenizer), out, 64)
    return out


@pytest.fixture(scope="module")
def imported(llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "ckpt"
    report = import_hf(llama_dir, out, check=True)
    return out, report


def _state(ckpt):
    from growth import roles as R
    from training.checkpoint import read_meta
    from training.checkpoint.logical import read_logical
    from training.config import ModelConfig
    from training.config_base import from_dict

    cfg = from_dict(ModelConfig, read_meta(ckpt)["config"]["model"])
    params, _ = read_logical(ckpt)
    return cfg, {k: params[k] for k in R.logical_keys(cfg)}


def test_import_matches_transformers(imported, llama_dir, sp_tokenizer, tmp_path):
    from training.data.tokenizer import load_tokenizer

    out, report = imported
    assert report.check.within and report.check.dtype == "float32"
    meta = json.loads((out / "flm_checkpoint.json").read_text())
    model = meta["config"]["model"]
    assert (model["num_query_groups"], model["tie_embeddings"], model["bias"], model["normalization"]) == (
        2,
        True,
        False,
        "RMSNorm",
    )
    assert meta["step"] == 0 and not meta["has_optimizer"] and meta["tokenizer"] == "tokenizer"
    assert load_tokenizer(out / "tokenizer").sha256 == load_tokenizer(sp_tokenizer).sha256
    assert (out / "model.yaml").is_file()
    cfg, state = _state(out)
    assert state["embedding.word_embeddings.weight"].shape[0] == 512  # padded rows, zero
    assert not state["embedding.word_embeddings.weight"][VOCAB:].any()
    tokens = random_tokens(VOCAB, 64, batch=3, seed=4)
    fp32 = compare(cfg, state, load_hf_model(llama_dir, torch.float32), tokens)
    assert fp32.within and fp32.max_abs_logit > 1.0, fp32.summary()
    # float64: import stored in float64, transformers in float64
    import_hf(llama_dir, tmp_path / "f64", dtype="float64", layout="tp=2")
    cfg64, state64 = _state(tmp_path / "f64")
    assert state64["decoder.final_layernorm.weight"].dtype == torch.float64
    fp64 = compare(cfg64, state64, load_hf_model(llama_dir, torch.float64), tokens)
    assert fp64.within and fp64.tolerance == 1e-10, fp64.summary()
    assert json.loads((tmp_path / "f64" / "flm_checkpoint.json").read_text())["config"]["parallel"]["tp"] == 2


@pytest.mark.slow
def test_imported_checkpoint_trains_and_grows_exactly(imported, llama_dir, tmp_path, capsys):
    import transformers

    from training.cli import main
    from training.data.source import MockSource
    from training.hf.export import export_checkpoint

    out, report = imported
    # train 3 steps from the imported weights with the printed overrides
    rc = main(
        [
            "train",
            TINY,
            *report.overrides(),
            "train.steps=3",
            "train.global_batch_size=4",
            f"output_dir={tmp_path / 'run'}",
            *COMMON,
            "--init-from",
            str(out),
        ]
    )
    assert rc == 0
    metrics = {r["step"]: r for r in read_metrics(tmp_path / "run")}
    assert sorted(metrics) == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics.values())
    # step 1's loss is the forward loss of the imported weights: transformers' loss on that batch
    source = MockSource(VOCAB, 64, 1234)
    batch = torch.tensor(__import__("numpy").stack([source.sample(i) for i in range(4)]), dtype=torch.long)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(input_ids=batch[:, :-1]).logits
        hf_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
    assert metrics[1]["loss"] == pytest.approx(float(hf_loss), rel=1e-5)
    assert metrics[3]["loss"] != metrics[1]["loss"]

    # grow the imported checkpoint with exact operators: still transformers' function
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    assert main(["grow", str(out), str(tmp_path / "grown"), "--plan", str(plan), "--verify"]) == 0
    assert "[preserved]" in capsys.readouterr().out
    cfg, state = _state(tmp_path / "grown")
    assert (cfg.hidden_size, cfg.num_layers, cfg.kv_channels, cfg.output_multiplier) == (64, 3, 8, 0.5)
    tokens = random_tokens(VOCAB, 64, batch=2, seed=5)
    with torch.no_grad():
        original = hf(input_ids=tokens).logits
    assert max_rel_error(original, project_logits(cfg, state, tokens)) <= 1e-5
    # ... and exported back (tied embeddings, output_multiplier 0.5 folded into the final norm)
    export_checkpoint(tmp_path / "grown", tmp_path / "grown-hf")  # tokenizer: the grown model's source's
    card = (tmp_path / "grown-hf" / "README.md").read_text()  # the model card: the growth `flm grow` recorded
    assert "grown: hidden 32 → 64 (clone); ffn 64 → 128 (zero); layers 2 → 3 (zero)" in card
    assert "float64 reference: preserved" in card and "engine check not recorded" in card
    grown_hf = load_hf_model(tmp_path / "grown-hf", torch.float32)
    assert grown_hf.config.hidden_size == 64 and grown_hf.config.head_dim == 8
    with torch.no_grad():
        assert max_rel_error(original, grown_hf(input_ids=tokens).logits) <= 1e-5
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "grown-hf"))
    assert tok.encode("The key of the red box") == transformers.AutoTokenizer.from_pretrained(str(llama_dir)).encode(
        "The key of the red box", add_special_tokens=False
    )


def _copy(llama_dir, tmp_path, name="bad"):
    dst = tmp_path / name
    shutil.copytree(llama_dir, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_import_refusals(llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    def refused(src, match, **kwargs):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        with pytest.raises(HFInteropError, match=match):
            import_hf(src, out, **kwargs)
        assert not out.exists() and not list(tmp_path.glob(f".{out.name}*"))

    refused(tmp_path / "missing", "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, r"config.json not found: not a Hugging Face model directory")
    gpt2 = _copy(llama_dir, tmp_path, "gpt2")
    _edit_config(gpt2, model_type="gpt2")
    refused(gpt2, r"model_type 'gpt2' is not supported; import-hf reads llama, mistral, qwen2")
    gelu = _copy(llama_dir, tmp_path, "gelu")
    _edit_config(gelu, hidden_act="gelu")
    refused(gelu, "hidden_act is 'gelu'.*import is refused")
    scaled = _copy(llama_dir, tmp_path, "scaled")
    _edit_config(scaled, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    refused(scaled, r"rope_parameters.rope_type is 'linear' \(RoPE scaling, factor 2.0\)")
    refused(llama_dir, r"does not fit layout 'tp=3'.*not divisible by parallel.tp=3", layout="tp=3")
    refused(llama_dir, "--layout 'nowhere': no such file", layout="nowhere")
    pickled = _copy(llama_dir, tmp_path, "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    refused(pickled, r"no model.safetensors.*pytorch_model.bin.*safe_serialization=True")
    holes = _copy(llama_dir, tmp_path, "holes")
    weights = load_file(str(holes / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, str(holes / "model.safetensors"), metadata={"format": "pt"})
    refused(holes, "no 'model.layers.1.mlp.up_proj.weight'")
    notok = _copy(llama_dir, tmp_path, "notok")
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        (notok / name).unlink()
    refused(
        notok,
        r"has no tokenizer \(neither tokenizer.json, tokenizer_config.json nor a sentencepiece "
        r"tokenizer.model\).*--no-tokenizer",
    )
    report = import_hf(notok, tmp_path / "weights-only", no_tokenizer=True)
    assert report.tokenizer is None and not (tmp_path / "weights-only" / "tokenizer").exists()
    with pytest.raises(HFInteropError, match="refusing to overwrite"):
        import_hf(llama_dir, tmp_path / "weights-only")


def test_cli_import_prints_how_to_train(llama_dir, tmp_path, capsys):
    from training.cli import main

    assert main(["import-hf", str(llama_dir), str(tmp_path / "ck"), "--check", "--seq-length", "32"]) == 0
    out = capsys.readouterr().out
    assert "flm train RUN.yaml model.num_layers=2" in out and "model.seq_length=32" in out and "[OK]" in out
    assert main(["import-hf", str(tmp_path / "nothing"), str(tmp_path / "ck2")]) == 2
    assert "flm import-hf: error:" in capsys.readouterr().err
