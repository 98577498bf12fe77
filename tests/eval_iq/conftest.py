"""Fixtures for the IQ benchmark tests (this folder only).

Everything runs offline: the Hugging Face offline variables are set for the whole session, and
``no_network`` makes any socket connection attempt fail the test. Real SuperGLUE/CLUE/bAbI copies
are read from ``<repo>/../shared/data``; tests needing them skip with the reason when absent.
"""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

GENERATED = (
    "counting",
    "replace_lowercase",
    "replace_word",
    "head_tail",
    "full_repeating",
    "head_slicing",
    "multi_key_retrieval",
    "single_supporting_fact",
    "two_supporting_facts",
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository (real SuperGLUE/CLUE/bAbI copies)."""
    if not (SHARED_DATA / "superglue").is_dir() or not (SHARED_DATA / "clue").is_dir():
        pytest.skip(f"shared evaluation data not found at {SHARED_DATA} (expected superglue/ and clue/)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def babi_dir() -> Path:
    path = SHARED_DATA / "babi"
    if not (path / "qa1_single-supporting-fact_test.txt").is_file():
        pytest.skip(f"bAbI v1.1 files not found in {path}")
    return path


def _synthetic_afqmc(directory: Path) -> None:
    """A small AFQMC-layout file pair (the shared data has no AFQMC). Test-only, made-up pairs."""
    rng = random.Random("afqmc-fixture")
    subjects = ["花呗", "借呗", "余额宝", "信用卡", "账单", "红包", "积分", "转账"]
    actions = ["怎么还款", "可以提前还吗", "为什么用不了", "怎么开通", "额度怎么提升", "在哪里查看"]
    directory.mkdir(parents=True)
    pairs = [(s, a) for s in subjects for a in actions]  # 48: every dev record is a distinct text
    rng.shuffle(pairs)
    for name, n in (("dev.json", 40), ("train.json", 24)):
        with (directory / name).open("w", encoding="utf-8") as fh:
            for i in range(n):
                s, a = pairs[i] if name == "dev.json" else rng.choice(pairs)
                same = i % 2 == 0
                s2, a2 = (s, a) if same else (rng.choice([x for x in subjects if x != s]), a)
                row = {"sentence1": f"{s}{a}", "sentence2": f"请问{s2}{a2}", "label": "1" if same else "0"}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session")
def iq_data_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with all eight symbolic datasets: the shared copies (symlinked) plus a
    synthetic AFQMC, so every benchmark subtask can run in tests."""
    root = tmp_path_factory.mktemp("iqdata")
    (root / "superglue").symlink_to(shared_data / "superglue", target_is_directory=True)
    (root / "clue").mkdir()
    for d in (shared_data / "clue").iterdir():
        (root / "clue" / d.name).symlink_to(d, target_is_directory=True)
    _synthetic_afqmc(root / "clue" / "afqmc")
    return root


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail any attempt to open a network connection; returns the list of attempts."""
    attempts: list = []

    def guard(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"network access attempted in an offline test: {address}")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket.socket, "connect_ex", guard)
    return attempts


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama with a locally trained byte-level BPE tokenizer,
    saved with ``save_pretrained`` (nothing from the hub)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from eval_iq.generate import generate

    corpus = [inst["prompt"] + " " + inst["answer"] for name in GENERATED for inst in generate(name, size=20)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    config = transformers.LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits so greedy choices are far from ties
        model.lm_head.weight.mul_(20.0)
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


class _TableLM:
    """Mixin: an lm-eval LM answering from a prompt -> instance table built from the generators."""

    def __init__(self, instances: list[dict]):
        super().__init__()
        self.table = {inst["prompt"]: inst for inst in instances}
        self.calls = 0

    def _inst(self, context: str) -> dict:
        self.calls += 1
        return self.table[context]


@pytest.fixture(scope="session")
def oracle_lm_class():
    """LM that always gives the gold answer (with a leading space and, for generation, a
    trailing period that the normalisation must ignore)."""
    from lm_eval.api.model import LM

    class OracleLM(_TableLM, LM):
        def loglikelihood(self, requests):
            out = []
            for r in requests:
                ctx, cont = r.args
                inst = self._inst(ctx)
                out.append((0.0 if cont == " " + inst["answer"] else -10.0, True))
            return out

        def loglikelihood_rolling(self, requests):
            raise AssertionError("IQ tasks never request rolling log-likelihoods")

        def generate_until(self, requests):
            out = []
            for r in requests:
                answer = self._inst(r.args[0])["answer"]
                out.append(f" {answer}" if answer.endswith(".") else f"  {answer}.")
            return out

    return OracleLM


@pytest.fixture(scope="session")
def constant_lm_class():
    """LM that always gives the same answer: the first choice in sorted order for multiple
    choice (the symbol set is fixed per subtask), ``constant`` for generation."""
    from lm_eval.api.model import LM

    class ConstantLM(_TableLM, LM):
        def __init__(self, instances, constant: str = "kitchen"):
            super().__init__(instances)
            self.constant = constant

        def loglikelihood(self, requests):
            out = []
            for r in requests:
                ctx, cont = r.args
                first = min(self._inst(ctx)["choices"])
                out.append((0.0 if cont == " " + first else -10.0, False))
            return out

        def loglikelihood_rolling(self, requests):
            raise AssertionError("IQ tasks never request rolling log-likelihoods")

        def generate_until(self, requests):
            return [" " + self.constant for _ in requests]

    return ConstantLM


@pytest.fixture(scope="session")
def reference_solvers():
    """The independent solvers of ``solvers.py`` (loaded by path: no import-mode assumptions)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_iq_test_solvers", Path(__file__).with_name("solvers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
