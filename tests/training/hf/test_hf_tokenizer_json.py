"""Models whose tokenizer is a Hugging Face ``tokenizer.json`` (byte-level BPE, built offline with the
``tokenizers`` library): ``flm import-hf`` keeps the tokenizer, ``flm export-hf`` writes it back
unchanged (same bytes, same ids on a multilingual text), the IQ backend encodes with it, and bad
tokenizer files are refused clearly."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.training.data.data_helpers import MULTILINGUAL
from tests.training.hf.hf_helpers import bpe_tokenizer, random_hf_model
from training.data.tokenizer import load_tokenizer
from training.hf.errors import HFInteropError
from training.hf.export import export_checkpoint
from training.hf.importer import import_hf


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return bpe_tokenizer(tmp_path_factory.mktemp("bpe") / "tok")


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory, bpe_dir):
    tok = load_tokenizer(bpe_dir)
    return random_hf_model(
        tmp_path_factory.mktemp("llama") / "llama",
        "llama",
        bpe_dir,
        vocab_size=tok.vocab_size,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_id,
        pad_token_id=tok.pad_id,
        bos_token_id=None,
    )


def test_import_keeps_tokenizer_json_and_export_writes_it_back(bpe_llama, bpe_dir, tmp_path):
    import transformers

    report = import_hf(bpe_llama, tmp_path / "ck", check=True)
    assert report.check.within and report.tokenizer["kind"] == "hf"
    assert json.loads((tmp_path / "ck" / "flm_checkpoint.json").read_text())["tokenizer"] == "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "ck" / "tokenizer" / name).read_bytes() == (bpe_dir / name).read_bytes()
    kept = load_tokenizer(tmp_path / "ck" / "tokenizer")
    assert kept.kind == "hf" and kept.sha256 == load_tokenizer(bpe_dir).sha256

    export = export_checkpoint(tmp_path / "ck", tmp_path / "hf", check=True)  # tokenizer: the checkpoint's own
    assert export.check.within and export.tokenizer["kind"] == "hf"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "hf" / name).read_bytes() == (bpe_dir / name).read_bytes()
    original = transformers.AutoTokenizer.from_pretrained(str(bpe_llama))
    exported = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = original.encode(MULTILINGUAL)
    assert exported.encode(MULTILINGUAL) == ids == kept.encode(MULTILINGUAL) and len(ids) > 50
    assert exported.decode(ids) == MULTILINGUAL
    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "hf"))
    assert (config.eos_token_id, config.pad_token_id) == (kept.eos_id, kept.pad_id)
    record = json.loads((tmp_path / "hf" / "flm_export.json").read_text())["tokenizer"]
    assert record["sha256"] == kept.sha256 and record["limitation"] is None
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"written by `flm import-hf` from the Hugging Face model `{bpe_llama.resolve()}`" in card
    assert f"| kind | hf |\n| vocabulary | {kept.vocab_size} |\n| SHA-256 | `{kept.sha256}` |" in card


def test_iq_backend_encodes_with_the_kept_tokenizer(bpe_llama, tmp_path):
    from training.apps.iq_backend import load_backend

    import_hf(bpe_llama, tmp_path / "ck")
    backend = load_backend(tmp_path / "ck")
    tok = load_tokenizer(bpe_llama)
    assert backend.encode(MULTILINGUAL) == tok.encode(MULTILINGUAL)
    assert backend.eos_token_id == tok.eos_id and backend.bos_token_id is None
    assert backend.decode(tok.encode("The key") + [tok.eos_id]) == "The key"


def test_bad_tokenizer_files_are_refused(bpe_llama, tmp_path):
    def copy(name):
        dst = tmp_path / name
        shutil.copytree(bpe_llama, dst)
        return dst

    none = copy("none")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (none / f).unlink()
    with pytest.raises(HFInteropError, match="has no tokenizer .*--no-tokenizer"):
        import_hf(none, tmp_path / "o1")
    assert import_hf(none, tmp_path / "o2", no_tokenizer=True).tokenizer is None
    broken = copy("broken")
    (broken / "tokenizer.json").write_text('{"model": {"type": "nonsense"}}')
    with pytest.raises(HFInteropError, match="not a valid tokenizer.json.*--no-tokenizer"):
        import_hf(broken, tmp_path / "o3")
    small = copy("small")
    config = json.loads((small / "config.json").read_text())
    big = bpe_tokenizer(tmp_path / "bigtok", vocab_size=config["vocab_size"] + 40)
    shutil.copyfile(big / "tokenizer.json", small / "tokenizer.json")
    with pytest.raises(HFInteropError, match="has 440 ids but the model's embedding has only 400 rows"):
        import_hf(small, tmp_path / "o4")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 3, 4))
