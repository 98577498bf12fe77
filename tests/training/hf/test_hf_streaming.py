"""Export and import stream: sharded safetensors with a valid index, written tensor by tensor;
every source tensor is read once, one layer at a time, and nothing read or folded earlier is still in
memory when the next is read (counted with weak references to the tensors' storages); float64
arithmetic in small blocks gives the same bytes as in one block."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.multiprocessing.reductions import StorageWeakRef

from growth import roles as R
from tests.training.hf.hf_helpers import random_hf_model, random_state, variant, write_checkpoint
from training.checkpoint.dcp_io import TensorReader
from training.config import MuPConfig
from training.hf import fold as fold_module
from training.hf.export import export_checkpoint
from training.hf.fold import Fold
from training.hf.importer import LlamaWeights, import_hf
from training.hf.safetensors_io import INDEX, SINGLE, HFWeights, Planned, write_safetensors

#: three layers, untied, μP: the embedding, the output layer and the query rows are scaled
CFG = dataclasses.replace(
    variant("llama-gqa-untied", num_layers=3, bias=True), mup=MuPConfig(base_width=8, attention_multiplier=2.5)
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("stream") / "ckpt", CFG, random_state(CFG, 7))


def _tensors(hf_dir) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_writer_writes_the_bytes_safetensors_writes(dtype, tmp_path):
    """In safetensors' own order (names sorted, one dtype) the streamed file is byte for byte
    ``save_file``'s, 0-d and empty tensors included."""
    tensors = {"a": torch.randn(3, 5), "b": torch.tensor(2.5), "c": torch.zeros(0, 4), "d": torch.randn(7)}
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    planned = {k: Planned(tuple(v.shape), dtype, lambda v=v: v) for k, v in tensors.items()}
    write_safetensors(tmp_path / "ours.safetensors", planned)
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()
    # a view writes its own elements only, not its base's storage
    base = torch.arange(40, dtype=dtype).reshape(8, 5)
    write_safetensors(tmp_path / "view.safetensors", {"v": Planned((3, 5), dtype, lambda: base[2:5])})
    assert torch.equal(load_file(str(tmp_path / "view.safetensors"))["v"], base[2:5])


def test_sharded_export_has_a_valid_index(ckpt, tmp_path):
    """With a shard size the export is split into files with the standard index; the shards hold
    exactly the tensors of the unsharded export, bitwise."""
    export_checkpoint(ckpt, tmp_path / "one", no_tokenizer=True)
    assert not (tmp_path / "one" / INDEX).exists() and (tmp_path / "one" / SINGLE).is_file()
    whole = _tensors(tmp_path / "one")
    limit = 20_000
    export_checkpoint(ckpt, tmp_path / "sharded", no_tokenizer=True, max_shard_size=str(limit))
    out = tmp_path / "sharded"
    index = json.loads((out / INDEX).read_text())
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) > 3 and files == [
        f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)
    ]
    assert sorted(set(index["weight_map"].values())) == files
    for name in files:
        with safe_open(str(out / name), framework="pt") as f:
            keys = set(f.keys())
            assert f.metadata() == {"format": "pt"}
        assert keys == {k for k, v in index["weight_map"].items() if v == name}
        sizes = [whole[k].numel() * whole[k].element_size() for k in keys]
        assert sum(sizes) <= limit or len(keys) == 1  # a larger tensor gets a file of its own
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in whole.values())
    sharded = _tensors(out)
    assert sharded.keys() == whole.keys() and all(torch.equal(sharded[k], whole[k]) for k in whole)


def test_export_reads_each_tensor_once_and_holds_one_at_a_time(ckpt, tmp_path, monkeypatch):
    """Counting: every logical tensor is read once (the per-layer ones one layer at a time), and when
    a tensor is read, nothing read or folded before it is alive: memory holds one source at a time."""
    alive: list[tuple[StorageWeakRef, int]] = []
    reads: list[tuple[str, int, int | None]] = []
    read, fold = TensorReader.read, Fold.__call__

    def held() -> int:
        return sum(n for ref, n in alive if not ref.expired())

    def counting_read(self, key, start=0, length=None):
        assert held() == 0, f"reading {key}: {held()} bytes of earlier tensors still in memory"
        t = read(self, key, start, length)
        reads.append((key, start, length))
        alive.append((StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes()))
        return t

    def counting_fold(self, key, t):
        out = fold(self, key, t)
        alive.append((StorageWeakRef(out.untyped_storage()), out.untyped_storage().nbytes()))
        return out

    monkeypatch.setattr(TensorReader, "read", counting_read)
    monkeypatch.setattr(Fold, "__call__", counting_fold)
    export_checkpoint(ckpt, tmp_path / "hf", no_tokenizer=True, max_shard_size="30KB")
    layered = [k for k in R.logical_keys(CFG) if R.ROLES[k].layered]
    expected = {(k, 0, None) for k in R.logical_keys(CFG) if not R.ROLES[k].layered}
    expected |= {(k, i, 1) for k in layered for i in range(CFG.num_layers)}
    assert sorted(reads, key=str) == sorted(expected, key=str)  # each once, per-layer ones one layer each


def test_blocked_float64_arithmetic_gives_the_same_bytes(ckpt, tmp_path, monkeypatch):
    """Folding computes in float64 blocks of rows; blocks of a few elements (rows of the embedding,
    output and QKV split across many blocks) give exactly the bytes of one block per tensor."""
    export_checkpoint(ckpt, tmp_path / "big", no_tokenizer=True, dtype="bfloat16")
    monkeypatch.setattr(fold_module, "BLOCK_ELEMENTS", 50)
    export_checkpoint(ckpt, tmp_path / "small", no_tokenizer=True, dtype="bfloat16")
    assert (tmp_path / "big" / SINGLE).read_bytes() == (tmp_path / "small" / SINGLE).read_bytes()
    record = json.loads((tmp_path / "small" / "flm_export.json").read_text())["folded"]
    assert record["output_layer_scaled_by"] == pytest.approx(0.7 / 4) and "query_scaled_by" in record


def test_import_reads_each_tensor_once_and_holds_one_chunk(tmp_path, monkeypatch):
    """Import streams: every Hugging Face tensor is read once, and when a logical chunk is produced
    nothing read for an earlier chunk is alive; the result equals the tensors read whole."""
    hf_dir = random_hf_model(tmp_path / "llama", num_hidden_layers=3, max_position_embeddings=32, vocab_size=500)
    names: list[str] = []
    alive: list[tuple[StorageWeakRef, int]] = []
    get, produce = HFWeights.get, LlamaWeights.produce

    def counting_get(self, name):
        t = get(self, name)
        names.append(name)
        alive.append((StorageWeakRef(t.untyped_storage()), t.untyped_storage().nbytes()))
        return t

    def counting_produce(self, key, layer):
        held = sum(n for ref, n in alive if not ref.expired())
        assert held == 0, f"producing {key}[{layer}]: {held} bytes of earlier chunks still in memory"
        out = produce(self, key, layer)
        alive.append((StorageWeakRef(out.untyped_storage()), out.untyped_storage().nbytes()))
        return out

    monkeypatch.setattr(HFWeights, "get", counting_get)
    monkeypatch.setattr(LlamaWeights, "produce", counting_produce)
    import_hf(hf_dir, tmp_path / "ckpt", no_tokenizer=True, layout="tp=2")
    assert sorted(names) == sorted(load_file(str(hf_dir / SINGLE)))  # every tensor, once
    monkeypatch.undo()
    reader, hf = TensorReader(tmp_path / "ckpt"), load_file(str(hf_dir / SINGLE))
    emb = reader.read(R.EMBEDDING)
    assert emb.shape[0] == 512 and not emb[500:].any()  # padded for tp=2
    assert torch.equal(emb[:500], hf["model.embed_tokens.weight"])
    assert torch.equal(reader.read(R.FC2_WEIGHT, 2, 1)[0], hf["model.layers.2.mlp.down_proj.weight"])
