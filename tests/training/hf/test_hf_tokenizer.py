"""The exported tokenizer encodes like the project's sentencepiece tokenizer; imports check theirs."""

from __future__ import annotations

import random

import pytest

from tests.training.hf.hf_helpers import iq_texts, train_sentencepiece
from training.data.tokenizer import load_tokenizer
from training.hf.errors import HFInteropError
from training.hf.tokenizer import SAMPLE_TEXTS, _lookalike, import_sentencepiece, save_hf_tokenizer


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = list("abcdefghij ABC0123456789  \n\t.,:;!?-_()[]<>/\\'\"") + ["é", "中", "😀", "▁", "ß", "→"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def exported(request, sp_tokenizer, tmp_path_factory):
    """(project tokenizer, AutoTokenizer of the exported files) for a BPE and a unigram model."""
    import transformers

    src = (
        sp_tokenizer
        if request.param == "bpe"
        else train_sentencepiece(tmp_path_factory.mktemp("uni") / "tokenizer", model_type="unigram")
    )
    tok = load_tokenizer(src)
    out = tmp_path_factory.mktemp("hf-tok")
    record = save_hf_tokenizer(tok, out, model_max_length=128)
    assert record["sha256"] == tok.sha256 and record["vocab_size"] == tok.vocab_size
    assert (record["limitation"] is not None) == (request.param == "unigram")
    return tok, transformers.AutoTokenizer.from_pretrained(str(out)), request.param == "unigram"


def test_same_ids_on_samples_benchmark_prompts_and_random_text(exported):
    tok, hf, unigram = exported
    texts = list(SAMPLE_TEXTS) + iq_texts(size=4) + _random_texts(300)
    if unigram:  # the documented limitation, checked so the documentation stays true
        lookalikes = [t for t in texts if _lookalike(t)]
        assert lookalikes and all(tok.encode(t) != hf(t)["input_ids"] for t in lookalikes)
        texts = [t for t in texts if not _lookalike(t)]
    bad = [(t, tok.encode(t), hf(t)["input_ids"]) for t in texts if tok.encode(t) != hf(t)["input_ids"]]
    assert not bad, bad[:3]
    # encode() with its defaults (what lm-eval's hf backend calls) adds no BOS either
    assert all(hf.encode(t) == tok.encode(t) for t in texts[:20])
    assert hf.encode("The key") and hf.encode("The key")[0] != tok.bos_id


def test_special_tokens_and_decoding(exported):
    tok, hf, unigram = exported
    assert (
        (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
        == (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id)
        == (0, 1, 2, 3)
    )
    assert hf.convert_ids_to_tokens([1, 2]) == ["<s>", "</s>"]
    for text in [
        t for t in list(SAMPLE_TEXTS) + iq_texts(size=2) + _random_texts(50, seed=1) if not (unigram and _lookalike(t))
    ]:
        ids = tok.encode(text)
        assert hf.decode(ids) == tok.decode(ids)
        # generated ids end with eos: dropped by skip_special_tokens, as sentencepiece drops control pieces
        assert hf.decode(ids + [tok.eos_id], skip_special_tokens=True) == tok.decode(ids + [tok.eos_id])
    assert len(hf) == tok.vocab_size


def _hf_dir_with(tmp_path, tok_dir, model_file_from=None):
    """An HF-style tokenizer directory: converted files of ``tok_dir`` and (possibly another) tokenizer.model."""
    out = tmp_path / "hf"
    out.mkdir()
    save_hf_tokenizer(load_tokenizer(tok_dir), out, 64)
    if model_file_from is not None:
        (out / "tokenizer.model").write_bytes(load_tokenizer(model_file_from).model_bytes)
    return out


def test_import_copies_a_matching_sentencepiece_model(sp_tokenizer, tmp_path):
    hf = _hf_dir_with(tmp_path, sp_tokenizer)
    record = import_sentencepiece(hf, tmp_path / "tok", vocab_size=512)
    assert record["sha256"] == load_tokenizer(tmp_path / "tok").sha256 == load_tokenizer(sp_tokenizer).sha256


def test_import_refuses_missing_foreign_or_mismatched_tokenizers(sp_tokenizer, tmp_path):
    hf = _hf_dir_with(tmp_path, sp_tokenizer)
    with pytest.raises(HFInteropError, match="has 500 ids but the model's embedding has only 300 rows"):
        import_sentencepiece(hf, tmp_path / "a", vocab_size=300)
    (hf / "tokenizer.model").unlink()
    with pytest.raises(HFInteropError, match=r"tokenizer.model not found.*--no-tokenizer"):
        import_sentencepiece(hf, tmp_path / "b", vocab_size=512)
    (hf / "tokenizer.model").write_text("not a model")
    with pytest.raises(HFInteropError, match="not a sentencepiece model"):
        import_sentencepiece(hf, tmp_path / "c", vocab_size=512)
    other = train_sentencepiece(tmp_path / "other", vocab_size=420)
    (hf / "tokenizer.model").write_bytes(load_tokenizer(other).model_bytes)
    with pytest.raises(HFInteropError, match="disagree.*mismatched tokenizer"):
        import_sentencepiece(hf, tmp_path / "d", vocab_size=512)
    assert not any((tmp_path / n).exists() for n in "abcd")
