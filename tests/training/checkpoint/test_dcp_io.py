"""Tensor-at-a-time checkpoint I/O (training/checkpoint/dcp_io.py): what it writes is a megatron torch_dist
checkpoint, rows are read without loading the rest, chunks are produced lazily and not kept, the
work is spread over ranks, and a failed write leaves nothing behind."""

from __future__ import annotations

import gc
import json
import os
import weakref

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import training.engine  # noqa: F401  (the CPU bridge first: spawned workers re-import this module without conftest)

# isort: split
from megatron.core import dist_checkpointing

from training.checkpoint import CheckpointError
from training.checkpoint.dcp_io import CheckpointFormatError, ChunkedTensor, TensorReader, in_memory, write_tensors
from training.checkpoint.logical import layer_rows, write_logical, write_logical_chunks
from training.engine.parallel import init_process_group


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    init_process_group()


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {
        "decoder.layers.w": torch.randn(5, 3, 4, generator=gen),
        "b": torch.randn(7, generator=gen),
        "scalar": torch.tensor(2.5),
        "blocks": torch.randn(10, 2, generator=gen).double(),
    }


def _write(path, tensors, rows):
    path.mkdir()
    write_tensors(path, [in_memory(k, v, rows.get(k)) for k, v in tensors.items()], {"note": "common"})
    return path


def test_written_checkpoint_is_what_megatron_reads(tmp_path):
    tensors = _tensors()
    out = _write(tmp_path / "ck", tensors, {"decoder.layers.w": 1, "blocks": 3})
    plain = dist_checkpointing.load_plain_tensors(str(out))
    assert plain["note"] == "common"
    for key, value in tensors.items():
        assert torch.equal(plain[key], value) and plain[key].dtype == value.dtype, key
    assert json.loads((out / "metadata.json").read_text())["sharded_backend"] == "torch_dist"


def test_reader_returns_rows_across_stored_chunks(tmp_path):
    tensors = _tensors()
    out = _write(tmp_path / "ck", tensors, {"decoder.layers.w": 1, "blocks": 3})
    reader = TensorReader(out)
    assert sorted(reader.keys()) == sorted(tensors)
    assert reader.stored_rows("decoder.layers.w") == 1 and reader.stored_rows("blocks") == 3
    assert reader.shape("blocks") == (10, 2) and reader.dtype("blocks") == torch.float64
    for key, value in tensors.items():
        assert torch.equal(reader.read(key), value), key
    assert torch.equal(reader.read("decoder.layers.w", 3, 1), tensors["decoder.layers.w"][3:4])
    assert torch.equal(reader.read("blocks", 2, 6), tensors["blocks"][2:8])  # spans three stored chunks
    assert torch.equal(reader.read("blocks", 9, 1), tensors["blocks"][9:])  # the short last chunk
    with pytest.raises(CheckpointFormatError, match="outside"):
        reader.read("blocks", 8, 3)
    with pytest.raises(CheckpointFormatError, match="no tensor 'missing'"):
        reader.read("missing")
    with pytest.raises(CheckpointFormatError, match="not a torch_dist checkpoint"):
        TensorReader(tmp_path)


def test_reader_reads_a_training_checkpoint_layer_by_layer(tmp_path):
    from tests.helpers import REPO
    from training.config import load_run_config
    from training.data.source import MockSource
    from training.engine.trainer import Trainer

    cfg = load_run_config(
        REPO / "configs" / "runs" / "tiny.yaml",
        ["logging.progress_bar=false", "logging.tensorboard=false", f"output_dir={tmp_path}/run"],
    )
    trainer = Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0))
    trainer.step()
    saved = trainer.save()
    plain = dist_checkpointing.load_plain_tensors(str(saved))
    reader = TensorReader(saved)
    layered = [k for k in reader.keys() if ".layers." in k]
    assert layered and all(reader.stored_rows(k) == 1 for k in layered), (
        "training checkpoints store one layer per chunk"
    )
    for key in reader.keys():
        assert torch.equal(reader.read(key), plain[key]), key
    for key in layered:
        assert torch.equal(reader.read(key, 1, 1), plain[key][1:2]), key


def test_chunks_are_produced_on_demand_and_not_kept(tmp_path):
    alive, calls = [], []

    def produce(i):
        calls.append(i)
        t = torch.full((1, 256), float(i))
        alive.append(weakref.ref(t))
        return t

    out = tmp_path / "ck"
    out.mkdir()
    write_tensors(out, [ChunkedTensor("decoder.layers.x", (6, 256), torch.float32, produce, rows=1)])
    gc.collect()
    assert sorted(calls) == list(range(6)), "every chunk produced exactly once"
    assert all(ref() is None for ref in alive), "the writer keeps no reference to a written chunk"
    assert torch.equal(TensorReader(out).read("decoder.layers.x")[:, 0], torch.arange(6.0))


def test_a_wrong_chunk_or_a_failing_producer_leaves_nothing(tmp_path):
    bad_shape = ChunkedTensor("x", (4, 2), torch.float32, lambda i: torch.zeros(3, 2))
    with pytest.raises(ValueError, match="produced as"):
        write_logical_chunks(tmp_path / "a", [bad_shape], {"step": 0}, has_moments=False)

    def boom(i):
        if i == 2:
            raise RuntimeError("disk on fire")
        return torch.zeros(1, 8)

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_logical_chunks(
            tmp_path / "b",
            [ChunkedTensor("decoder.layers.y", (4, 8), torch.float32, boom, rows=1)],
            {"step": 0},
            has_moments=False,
        )

    def failing_meta(path):
        raise RuntimeError("verification failed")

    with pytest.raises(RuntimeError, match="verification failed"):
        write_logical_chunks(tmp_path / "c", [in_memory("z", torch.ones(2))], failing_meta, has_moments=False)
    assert sorted(os.listdir(tmp_path)) == [], "no destination and no .partial directory"
    good = write_logical_chunks(tmp_path / "d", [in_memory("z", torch.ones(2))], {"step": 0}, has_moments=False)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        write_logical_chunks(good, [in_memory("z", torch.zeros(2))], {"step": 0}, has_moments=False)
    assert torch.equal(TensorReader(good).read("z"), torch.ones(2)), "the existing checkpoint is untouched"


def test_write_logical_stores_layers_as_separate_chunks(tmp_path):
    assert layer_rows("decoder.layers.mlp.linear_fc1.weight") == 1
    assert layer_rows("optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight") == 1
    assert layer_rows("embedding.word_embeddings.weight") is None
    params = {
        "decoder.layers.mlp.linear_fc1.weight": torch.randn(3, 4, 2),
        "embedding.word_embeddings.weight": torch.randn(5, 2),
    }
    moments = {"exp_avg": {k: torch.rand_like(v) for k, v in params.items()}}
    out = write_logical(tmp_path / "ck", params, {"step": 0}, moments)
    reader = TensorReader(out)
    assert reader.stored_rows("decoder.layers.mlp.linear_fc1.weight") == 1
    assert reader.stored_rows("optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight") == 1
    # each stored chunk holds only its own rows (a view of a stacked tensor is not saved with its whole storage)
    size = sum(f.stat().st_size for f in out.glob("*.distcp"))
    assert size < 3 * sum(v.numel() * 4 for v in params.values()) + 40_000


def _two_rank_worker(rank: int, world: int, port: int, out: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    produced = []

    def produce(i):
        produced.append(i)
        return torch.full((1, 1024), float(i))

    nbytes = write_tensors(out, [ChunkedTensor("decoder.layers.x", (8, 1024), torch.float32, produce, rows=1)])
    torch.save({"chunks": produced, "bytes": nbytes}, f"{result}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_share_the_chunks(tmp_path):
    from training.local_launch import free_port

    out = tmp_path / "ck"
    out.mkdir()
    mp.spawn(_two_rank_worker, args=(2, free_port(), str(out), str(tmp_path / "r")), nprocs=2)
    results = [torch.load(tmp_path / f"r.{rank}") for rank in range(2)]
    chunks = [r["chunks"] for r in results]
    assert sorted(chunks[0] + chunks[1]) == list(range(8)), "every chunk written once, by one rank"
    assert all(len(c) == 4 for c in chunks), f"balanced: {chunks}"
    full = TensorReader(out).read("decoder.layers.x")
    assert torch.equal(full[:, 0], torch.arange(8.0))


def test_megatron_config_file_is_what_megatron_writes():
    """The checkpoint layer writes megatron's ``metadata.json`` itself (no megatron import there);
    it must stay what megatron's own ``save_config`` writes for the torch_dist backend."""
    import dataclasses

    from megatron.core.dist_checkpointing.core import CheckpointingConfig

    from training.checkpoint.dcp_io import MEGATRON_CONFIG

    assert MEGATRON_CONFIG == dataclasses.asdict(CheckpointingConfig("torch_dist"))
