"""The IQ benchmark gives identical results on a trained checkpoint through the project backend
(``flm iq --model flm --checkpoint CKPT``: ``training.apps.iq_backend``) and on its export through
lm-eval's ``hf`` backend (``flm iq --model hf --model-path OUT``); the backend's errors are clear."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import REPO, read_metrics
from tests.training.hf.hf_helpers import VOCAB, iq_texts, random_state, variant, write_checkpoint

TINY = str(REPO / "configs" / "runs" / "tiny.yaml")
SUBTASKS = "head_tail,single_supporting_fact,multi_key_retrieval,replace_lowercase"
MODEL = [
    "model.vocab_size=500",
    "model.seq_length=128",
    "model.normalization=RMSNorm",
    "model.activation=swiglu",
    "model.num_query_groups=2",
    "model.tie_embeddings=false",
    "model.bias=false",
    "model.input_multiplier=2.0",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sp_tokenizer):
    """A Llama-variant model trained 60 steps on IQ-style text (prepared data with the test tokenizer),
    and its export; the export finds the tokenizer through the run's data config."""
    from training.cli import main
    from training.data.ingest import CorpusSpec
    from training.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("iq")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in iq_texts(size=60)))
    prepare_dataset(CorpusSpec(inputs=(str(corpus),)), sp_tokenizer, root / "data", workers=1)
    rc = main(
        [
            "train",
            TINY,
            *MODEL,
            "data.kind=prepared",
            f"data.datasets=[{{path: {root / 'data'}, weight: 1.0}}]",
            "train.steps=60",
            "train.lr=3e-3",
            "train.eval_interval=1000",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            f"output_dir={root / 'run'}",
        ]
    )
    assert rc == 0
    losses = [r["loss"] for r in read_metrics(root / "run")]
    assert losses[-1] < losses[0] - 1.0, losses  # it learned something: answers are not pure noise
    ckpt = root / "run" / "checkpoints"
    assert main(["export-hf", str(ckpt), str(root / "hf"), "--check"]) == 0
    return root, ckpt


def _iq(model_args, out):
    from eval_iq.cli import main

    assert (
        main([*model_args, "--subtasks", SUBTASKS, "--limit", "4", "--batch-size", "4", "--output-dir", str(out)]) == 0
    )
    results = json.loads((out / "results.json").read_text())
    samples = {p.stem: [json.loads(x) for x in p.read_text().splitlines()] for p in (out / "samples").glob("*.jsonl")}
    return results, samples


@pytest.mark.slow
def test_iq_scores_identical_on_checkpoint_and_export(trained, capsys):
    root, ckpt = trained
    ours, our_samples = _iq(["--model", "flm", "--checkpoint", str(ckpt)], root / "iq-flm")
    theirs, their_samples = _iq(["--model", "hf", "--model-path", str(root / "hf")], root / "iq-hf")
    assert ours["model"]["backend"] == "flm" and theirs["model"]["backend"] == "hf"
    assert set(ours["subtasks"]) == set(SUBTASKS.split(","))
    for name, sub in ours["subtasks"].items():
        assert sub["acc"] == theirs["subtasks"][name]["acc"], name
        assert sub["n"] == 4
    assert our_samples.keys() == their_samples.keys() and len(our_samples) == 4
    responses = []
    for task, rows in our_samples.items():
        assert [r["response"] for r in rows] == [r["response"] for r in their_samples[task]], task
        responses += [r["response"][0] for r in rows]
    # the comparison is not vacuous: the model generates text, and not the same text everywhere
    assert sum(1 for r in responses if r.strip()) >= len(responses) // 2 and len(set(responses)) > 2, responses


def _pairs():
    from eval_iq.generate import generate

    pairs = [(i["prompt"], " " + i["answer"]) for n in ("counting", "head_tail") for i in generate(n, size=2)]
    return pairs + [(c, " kitchen") for c, _ in pairs]


def _ll(lm, pairs):
    from lm_eval.api.instance import Instance

    return lm.loglikelihood([Instance("loglikelihood", {}, p, 0) for p in pairs], disable_tqdm=True)


@pytest.mark.slow
def test_loglikelihoods_equal_on_checkpoint_and_export(trained):
    """Multiple-choice scoring: the same adapter over the checkpoint and over the exported model."""
    from eval_iq.adapter import BackendLM, HFBackend
    from training.apps.iq_backend import load_backend

    root, ckpt = trained
    backend = load_backend(ckpt)
    assert backend.max_length == 128 and backend.eos_token_id == 2
    ours = _ll(BackendLM(backend, batch_size=3), _pairs())
    theirs = _ll(BackendLM(HFBackend.from_pretrained(root / "hf"), batch_size=3), _pairs())
    for (a, ga), (b, gb) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    assert len({round(a, 2) for a, _ in ours}) > len(ours) // 2


@pytest.mark.slow
def test_adapter_loglikelihood_equals_lm_eval_hf_backend(trained):
    from lm_eval.models.huggingface import HFLM

    from eval_iq.adapter import BackendLM, HFBackend

    root, _ = trained
    ours = _ll(BackendLM(HFBackend.from_pretrained(root / "hf"), batch_size=3), _pairs())
    theirs = _ll(HFLM(pretrained=str(root / "hf"), device="cpu", batch_size=3, dtype="float32"), _pairs())
    assert [a for a, _ in ours] == pytest.approx([b for b, _ in theirs], abs=1e-4)


def test_backend_errors_are_clear(tmp_path, capsys):
    from eval_iq.cli import main
    from training.apps.iq_backend import CheckpointBackendError, load_backend

    cfg = variant("neox-gqa-tied-bias")
    ckpt = write_checkpoint(tmp_path / "mock", cfg, random_state(cfg, 0))
    with pytest.raises(CheckpointBackendError, match="trained on mock data.*flm export-hf CKPT OUT --tokenizer"):
        load_backend(ckpt)
    with pytest.raises(CheckpointBackendError, match="no checkpoint in"):
        load_backend(tmp_path)
    assert main(["--model", "flm", "--checkpoint", str(ckpt), "--subtasks", "counting"]) == 2
    assert "flm iq: error: cannot evaluate checkpoint" in capsys.readouterr().err


def test_backend_computes_the_checkpoint_function(tmp_path, sp_tokenizer):
    """Logits are the reference model's on the logical state (vocabulary columns only), also for a
    grown checkpoint whose masks still ramp; encode/decode are the project tokenizer's."""
    from growth.masks import MaskState
    from growth.reference import reference_logits
    from training.apps.iq_backend import load_backend
    from training.data.tokenizer import load_tokenizer

    cfg = variant("llama-gqa-untied")
    state = random_state(cfg, 1)
    masks = MaskState(ramp_steps=4, steps_done=1, ffn_old=24, ffn_new=48)
    ckpt = write_checkpoint(tmp_path / "ck", cfg, state, growth_masks=masks.to_dict())
    backend = load_backend(ckpt, tokenizer=sp_tokenizer)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    expected = reference_logits(cfg, state, tokens, masks.values())[..., :VOCAB]
    assert torch.equal(backend.logits(tokens), expected)
    assert not torch.equal(backend.logits(tokens), reference_logits(cfg, state, tokens)[..., :VOCAB])
    tok = load_tokenizer(sp_tokenizer)
    assert backend.encode("The key") == tok.encode("The key")
    assert backend.decode(tok.encode("The key") + [2, 0]) == "The key"


#: FLM-101B's block (LayerNorm + GELU + biases, tied) with xPos and a muP input multiplier
FLM_MODEL = [
    "model.seq_length=128",
    "model.position_embedding=xpos",
    "model.xpos_scale_base=64",
    "model.num_query_groups=2",
    "model.input_multiplier=2.0",
]


@pytest.fixture(scope="module")
def trained_tp2(tmp_path_factory):
    """An FLM-shaped (xPos) model trained 60 steps under TP2 (2 processes) on IQ-style text prepared
    with a byte-level BPE tokenizer.json, and its export (the project's model code: FLMForCausalLM)."""
    from tests.helpers import flm
    from tests.training.hf.hf_helpers import bpe_tokenizer
    from training.cli import main
    from training.data.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("iq-tp2")
    tok = bpe_tokenizer(root / "tok")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in iq_texts(size=60)))
    assert (
        main(["data", "prepare", str(corpus), "--tokenizer", str(tok), "--out", str(root / "data"), "--workers", "1"])
        == 0
    )
    flm(
        "train",
        TINY,
        *FLM_MODEL,
        f"model.vocab_size={load_tokenizer(tok).vocab_size}",
        "parallel.tp=2",
        "data.kind=prepared",
        f"data.datasets=[{{path: {root / 'data'}, weight: 1.0}}]",
        "train.steps=60",
        "train.lr=3e-3",
        "train.eval_interval=1000",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        f"output_dir={root / 'run'}",
        nproc=2,
        timeout=900,
    )
    losses = [r["loss"] for r in read_metrics(root / "run")]
    assert losses[-1] < losses[0] - 1.0, losses
    ckpt = root / "run" / "checkpoints"
    assert main(["export-hf", str(ckpt), str(root / "hf"), "--check"]) == 0
    return root, ckpt


@pytest.mark.slow
def test_iq_scores_identical_through_exported_flm_model_of_tp2_checkpoint(trained_tp2, capsys):
    """The scalable path (lm-eval's hf backend on the export: batching by length, KV-cache generation,
    accelerate placement) gives the in-process adapter's scores and generations on a TP2 checkpoint."""
    from training.checkpoint import read_meta, resolve

    root, ckpt = trained_tp2
    assert read_meta(resolve(ckpt))["layout"]["tp"] == 2
    assert json.loads((root / "hf" / "config.json").read_text())["architectures"] == ["FLMForCausalLM"]
    ours, our_samples = _iq(["--model", "flm", "--checkpoint", str(ckpt)], root / "iq-flm")
    theirs, their_samples = _iq(["--model", "hf", "--model-path", str(root / "hf")], root / "iq-hf")
    assert theirs["model"]["backend"] == "hf"
    for name, sub in ours["subtasks"].items():
        assert sub["acc"] == theirs["subtasks"][name]["acc"], name
    responses = []
    for task, rows in our_samples.items():
        assert [r["response"] for r in rows] == [r["response"] for r in their_samples[task]], task
        responses += [r["response"][0] for r in rows]
    assert sum(1 for r in responses if r.strip()) >= len(responses) // 2 and len(set(responses)) > 2, responses
    # --parallelize (accelerate's device_map="auto"; here everything lands on the CPU): the same results
    spread, spread_samples = _iq(
        ["--model", "hf", "--model-path", str(root / "hf"), "--parallelize"], root / "iq-hf-spread"
    )
    assert {n: s["acc"] for n, s in spread["subtasks"].items()} == {n: s["acc"] for n, s in ours["subtasks"].items()}
    assert {t: [r["response"] for r in rows] for t, rows in spread_samples.items()} == {
        t: [r["response"] for r in rows] for t, rows in our_samples.items()
    }
