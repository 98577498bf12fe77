"""The whole path for a model people already have, with its own Hugging Face tokenizer:

a small random Llama with a byte-level BPE ``tokenizer.json`` (built offline with ``tokenizers``)
-> ``flm import-hf`` (keeps the tokenizer) -> ``flm data prepare --tokenizer <imported tokenizer>`` on
a local corpus -> ``flm train --init-from`` a few steps -> ``flm grow`` -> ``flm train`` the grown
model -> ``flm export-hf`` -> transformers loads it, its tokenizer gives the original ids, and its
logits equal the project's."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import REPO, read_metrics
from tests.training.data.data_helpers import MULTILINGUAL
from tests.training.hf.hf_helpers import bpe_tokenizer, iq_texts, random_hf_model

TINY = str(REPO / "configs" / "runs" / "tiny.yaml")
COMMON = [
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "train.eval_interval=1000",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
    "train.warmup_steps=1",
    "train.lr=3e-3",
]


def _model_overrides(ckpt):
    from training.checkpoint import read_meta, resolve
    from training.hf.importer import model_overrides

    return model_overrides(read_meta(resolve(ckpt))["config"]["model"])


@pytest.mark.slow
def test_llama_with_tokenizer_json_imports_trains_grows_trains_exports(tmp_path, capsys):
    import transformers

    from training.cli import main
    from training.data.tokenizer import load_tokenizer
    from training.hf.compare import compare_dirs

    # 1. a Llama with a byte-level BPE tokenizer.json, as released models ship
    tok_dir = bpe_tokenizer(tmp_path / "tok")
    vocab = load_tokenizer(tok_dir).vocab_size
    src = random_hf_model(
        tmp_path / "llama", "llama", tok_dir, vocab_size=vocab, tie_word_embeddings=False, max_position_embeddings=32
    )
    original_ids = transformers.AutoTokenizer.from_pretrained(str(src)).encode(MULTILINGUAL)

    # 2. import with its tokenizer
    assert main(["import-hf", str(src), str(tmp_path / "imported"), "--check"]) == 0
    assert "hf tokenizer" in capsys.readouterr().out

    # 3. prepare a local corpus with that tokenizer (the CLI, as a user would)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in iq_texts(size=20) + [MULTILINGUAL] * 5))
    assert (
        main(
            [
                "data",
                "prepare",
                str(corpus),
                "--tokenizer",
                str(tmp_path / "imported" / "tokenizer"),
                "--out",
                str(tmp_path / "data"),
                "--workers",
                "1",
            ]
        )
        == 0
    )
    data = ["data.kind=prepared", f"data.datasets=[{{path: {tmp_path / 'data'}, weight: 1.0}}]"]

    # 4. train a few steps from the imported weights
    assert (
        main(
            [
                "train",
                TINY,
                *_model_overrides(tmp_path / "imported"),
                *data,
                *COMMON,
                "train.steps=3",
                f"output_dir={tmp_path / 'run1'}",
                "--init-from",
                str(tmp_path / "imported"),
            ]
        )
        == 0
    )
    first = read_metrics(tmp_path / "run1")
    assert [r["step"] for r in first] == [1, 2, 3] and first[-1]["loss"] < first[0]["loss"]

    # 5. grow the trained model (exact operators: same function, verified)
    padded = -(-vocab // 64) * 64
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "new: {layers: 3, hidden: 64, ffn: 128, heads: 4, query_groups: 2, head_dim: 8, "
        f"vocab: {padded}}}\n"
        "operators: {hidden: clone, ffn: zero, depth: zero}\n"
        "depth: {placement: stack, init: copy}\n"
    )
    assert (
        main(["grow", str(tmp_path / "run1" / "checkpoints"), str(tmp_path / "grown"), "--plan", str(plan), "--verify"])
        == 0
    )
    assert "[preserved]" in capsys.readouterr().out

    # 6. train the grown model
    assert (
        main(
            [
                "train",
                TINY,
                *_model_overrides(tmp_path / "grown"),
                *data,
                *COMMON,
                "train.steps=3",
                f"output_dir={tmp_path / 'run2'}",
                "--init-from",
                str(tmp_path / "grown"),
            ]
        )
        == 0
    )
    second = read_metrics(tmp_path / "run2")
    assert [r["step"] for r in second] == [1, 2, 3]

    # 7. export; transformers loads it with its tokenizer, which gives the original ids
    assert main(["export-hf", str(tmp_path / "run2" / "checkpoints"), str(tmp_path / "out"), "--check"]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    exported = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert exported.encode(MULTILINGUAL) == original_ids
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tok_dir / name).read_bytes()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 3
    # its logits are the project's, on random tokens and on the tokenized multilingual text
    for seed in (0, 1):
        result = compare_dirs(tmp_path / "run2" / "checkpoints", tmp_path / "out", seed=seed)
        assert result.within and result.max_abs_logit > 1.0, result.summary()
    from training.apps.iq_backend import load_backend

    backend = load_backend(tmp_path / "run2" / "checkpoints")
    ids = torch.tensor([backend.encode(MULTILINGUAL)[:32]])
    assert ids[0].tolist() == original_ids[:32]
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    ours = backend.logits(ids)
    assert float((ours - theirs).abs().max()) <= 1e-5 * (1 + float(ours.abs().max()))
