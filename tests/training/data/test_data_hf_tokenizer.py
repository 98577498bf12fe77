"""Hugging Face tokenizers in the data pipeline: the tokenizer interface over a byte-level BPE
``tokenizer.json`` (built offline with the ``tokenizers`` library), ``flm data prepare --tokenizer
HF_DIR``, the dataset's record of its tokenizer, ``build_sources`` with it, and clear refusals."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from tests.training.data.data_helpers import MULTILINGUAL, make_documents, write_hf_bpe_tokenizer
from training.data.ingest import CorpusSpec
from training.data.prepare import prepare_dataset
from training.data.tokenizer import load_tokenizer
from training.errors import DataError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, corpus_docs):
    return write_hf_bpe_tokenizer(tmp_path_factory.mktemp("hf") / "tok", corpus_docs[:200] + [MULTILINGUAL], 400)


def test_interface_over_tokenizer_json(hf_dir, corpus_docs, tmp_path):
    import transformers

    tok = load_tokenizer(hf_dir)
    auto = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    assert tok.kind == "hf" and tok.vocab_size == len(auto) == 400
    assert tok.special_ids() == {"unk": None, "bos": None, "eos": auto.eos_token_id, "pad": auto.pad_token_id}
    assert tok.fingerprint == tok.sha256 == hashlib.sha256((hf_dir / "tokenizer.json").read_bytes()).hexdigest()
    texts = [MULTILINGUAL] + corpus_docs[:30]
    assert tok.encode_batch(texts) == [auto.encode(t, add_special_tokens=False) for t in texts]
    assert all(tok.decode(tok.encode(t)) == t for t in texts)  # byte-level: exact round trip
    assert tok.decode(tok.encode("ab") + [tok.eos_id], skip_special_tokens=True) == "ab"
    again = pickle.loads(pickle.dumps(tok))
    assert again.encode(MULTILINGUAL) == tok.encode(MULTILINGUAL) and again.sha256 == tok.sha256
    # the tokenizer.json file alone; save() writes the files back unchanged
    assert load_tokenizer(hf_dir / "tokenizer.json").encode(MULTILINGUAL) == tok.encode(MULTILINGUAL)
    tok.save(tmp_path / "copy")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (hf_dir / name).read_bytes()
    assert load_tokenizer(tmp_path / "copy").sha256 == tok.sha256


def test_directory_only_autotokenizer_reads(hf_dir, tmp_path):
    """GPT-2 style vocab.json + merges.txt (no tokenizer.json): transformers builds the fast tokenizer."""
    import transformers

    tok = load_tokenizer(hf_dir)
    slow = tmp_path / "gpt2"
    slow.mkdir()
    tok.backend.model.save(str(slow))
    (slow / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "add_prefix_space": False})
    )
    loaded = load_tokenizer(slow)
    assert loaded.kind == "hf" and loaded.eos_id == tok.eos_id
    auto = transformers.AutoTokenizer.from_pretrained(str(slow))
    ids = tok.encode(MULTILINGUAL)
    assert loaded.encode(MULTILINGUAL) == auto.encode(MULTILINGUAL, add_special_tokens=False) == ids
    loaded.save(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").sha256 == loaded.sha256


def test_prepare_with_hf_tokenizer(hf_dir, corpus_file, corpus_docs, tmp_path, capsys):
    from training.cli import main
    from training.config.data import DataConfig, DatasetConfig
    from training.data.build import build_sources, check_vocab_size
    from training.data.shards import PreparedDataset

    tok = load_tokenizer(hf_dir)
    assert (
        main(
            [
                "data",
                "prepare",
                str(corpus_file),
                "--tokenizer",
                str(hf_dir),
                "--out",
                str(tmp_path / "ds"),
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert "prepared" in capsys.readouterr().out
    one = prepare_dataset(CorpusSpec(inputs=(str(corpus_file),)), tok, tmp_path / "one", workers=1)
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["tokenizer"]["sha256"] == tok.sha256
    assert manifest["tokenizer"]["file"] == "tokenizer" and manifest["tokenizer"]["eos_id"] == tok.eos_id
    assert manifest["fingerprint"] == one.manifest["fingerprint"]
    ds = PreparedDataset(tmp_path / "ds")
    assert load_tokenizer(ds.tokenizer_path()).sha256 == tok.sha256  # the copy is self-contained
    for i in (0, 7, len(corpus_docs) - 1):
        assert ds.document(i).tolist() == tok.encode(corpus_docs[i]) + [tok.eos_id]
    for shard in manifest["shards"]:
        ours, single = (np.fromfile(tmp_path / d / shard["file"], "<u2") for d in ("ds", "one"))
        assert np.array_equal(ours, single)
    # the trainer's sources: with the tokenizer named, and with the copy inside the dataset
    for tokenizer in (str(hf_dir), None):
        cfg = DataConfig(kind="prepared", datasets=[DatasetConfig(path=str(tmp_path / "ds"))], tokenizer=tokenizer)
        check_vocab_size(cfg, 400)
        train, _ = build_sources(cfg, seq_length=32, vocab_size=400)
        assert train.sample(0).shape == (33,)
    # a model may have more rows than a Hugging Face tokenizer has ids (released models pad them), not fewer
    check_vocab_size(cfg, 448)
    assert build_sources(cfg, seq_length=32, vocab_size=448)[0].sample(3).max() < 400
    with pytest.raises(DataError, match="model.vocab_size is 300 but the tokenizer .* has 400 ids"):
        check_vocab_size(cfg, 300)
    assert prepare_dataset(CorpusSpec(inputs=(str(corpus_file),)), hf_dir, tmp_path / "ds").prepared is False


def test_hf_tokenizer_refusals(hf_dir, tokenizer_dir, corpus_file, tmp_path):
    from training.config.data import DataConfig, DatasetConfig
    from training.data.build import build_sources

    no_eos = write_hf_bpe_tokenizer(tmp_path / "noeos", make_documents(50), 300, eos=None, pad=None)
    tj = json.loads((no_eos / "tokenizer.json").read_text())
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] != "<|endoftext|>"]
    del tj["model"]["vocab"]["<|endoftext|>"]
    (no_eos / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(DataError, match=r"names no end-of-text token.*\"eos_token\" in tokenizer_config.json"):
        load_tokenizer(no_eos)
    cfg = json.loads((no_eos / "tokenizer_config.json").read_text())
    (no_eos / "tokenizer_config.json").write_text(json.dumps(dict(cfg, eos_token="<eot>")))
    with pytest.raises(DataError, match="eos_token '<eot>' named in its tokenizer files is not in the vocabulary"):
        load_tokenizer(no_eos)
    (no_eos / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        load_tokenizer(no_eos)
    with pytest.raises(DataError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nothing")
    # data prepared with the HF tokenizer, data.tokenizer naming the sentencepiece one: refused
    prepare_dataset(CorpusSpec(inputs=(str(corpus_file),)), hf_dir, tmp_path / "ds", workers=1)
    cfg = DataConfig(kind="prepared", datasets=[DatasetConfig(path=str(tmp_path / "ds"))], tokenizer=str(tokenizer_dir))
    with pytest.raises(DataError, match="is not the tokenizer .* was prepared with"):
        build_sources(cfg, seq_length=32, vocab_size=400)
