"""bf16 under the megatron engine (``Float16Module``, mixed-precision optimizer with fp32 master
weights, and the distributed optimizer), in one CPU process:

- the losses track the fp32 run within the bf16 tolerance ``BF16_REL`` (0.5% relative: bf16 keeps 8
  significant bits, 2^-8 ≈ 0.4% per value; the loss is a mean over tokens and the update is
  computed on fp32 masters, so the measured gap is ~1e-4);
- resume is exact (the resumed run logs the uninterrupted run's losses bit for bit);
- growth carries the fp32 master weights: the grown checkpoint's masters and the new optimizer's
  main parameters equal the old masters bit for bit on the copied entries (they are not rounded to
  bf16), and the function is kept at the transition — for FFN and depth growth, and for the hidden
  size (FLM-101B's 16B -> 51B step, checked as a staged run checks it: the engine's transition check).
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer.module import Float16Module

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.growth.helpers import grown_plan
from tests.helpers import REPO
from training.checkpoint.dcp_io import TensorReader
from training.checkpoint.logical import master_key, stored_master_key
from training.config import load_run_config
from training.data.source import MockSource
from training.engine.megatron_checkpoint import _float16_main_params, unwrap_ddp
from training.engine.trainer import Trainer
from training.orchestration import transition
from training.orchestration.grow import grow_checkpoint

BF16_REL = 5e-3
COMMON = [
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "train.eval_interval=1000",
    "train.steps=6",
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.ffn_hidden_size=64",
    "model.seq_length=32",
    "model.vocab_size=256",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
]


def _trainer(tmp_path, name, *overrides):
    cfg = load_run_config(
        REPO / "configs" / "runs" / "tiny.yaml", [*COMMON, f"output_dir={tmp_path / name}", *overrides]
    )
    return Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0))


def _losses(trainer, n):
    return [trainer.step().loss for _ in range(n)]


def _main_param(trainer, param):
    """The fp32 master of a model parameter (mixed-precision or distributed optimizer, DP = 1)."""
    main = _float16_main_params(trainer.optimizer).get(id(param))
    if main is not None:
        return main.view(param.shape)
    for opt in trainer.optimizer.chained_optimizers:
        if param in getattr(opt, "model_param_gbuf_map", {}):
            return opt._get_main_param_and_optimizer_states(param)["param"].view(param.shape)
    raise AssertionError("no master weight")


@pytest.mark.parametrize("distopt", [False, True], ids=["mixed-precision-optimizer", "distributed-optimizer"])
def test_bf16_tracks_fp32_and_resumes_exactly(tmp_path, distopt):
    fp32 = _losses(_trainer(tmp_path, "fp32", "train.precision=fp32"), 6)
    opt = f"parallel.distributed_optimizer={str(distopt).lower()}"
    full = _trainer(tmp_path, "full", "train.precision=bf16", opt)
    assert isinstance(full.model[0].module, Float16Module)
    assert next(unwrap_ddp(full.model[0]).parameters()).dtype == torch.bfloat16
    first = _losses(full, 3)
    path = full.save()
    rest = _losses(full, 3)
    assert first + rest == pytest.approx(fp32, rel=BF16_REL)
    assert first + rest != fp32  # it did run in bf16

    resumed = _trainer(tmp_path, "resumed", "train.precision=bf16", opt)
    resumed.load(path)
    assert _losses(resumed, 3) == rest  # exact


@pytest.mark.parametrize("distopt", [False, True], ids=["mixed-precision-optimizer", "distributed-optimizer"])
def test_growth_carries_fp32_master_weights(tmp_path, distopt):
    opt = f"parallel.distributed_optimizer={str(distopt).lower()}"
    old = _trainer(tmp_path, "old", "train.precision=bf16", opt)
    _losses(old, 3)
    src = old.save()
    old_loss = old.evaluate(1)

    plan = grown_plan(
        old.cfg.model,
        {"ffn": "msg", "depth": "msg"},
        ffn_hidden_size=96,
        num_layers=3,
        plan={"depth": {"placement": "stack", "init": "copy"}},
    )
    dst = tmp_path / "grown"
    grow_checkpoint(src, dst, plan)
    old_ckpt, new_ckpt = TensorReader(src), TensorReader(dst)
    fc1 = "decoder.layers.mlp.linear_fc1.weight"
    old_master = old_ckpt.read(stored_master_key(old_ckpt, old_ckpt.dtype, fc1))
    new_master = new_ckpt.read(master_key(fc1))
    assert old_master.dtype == new_master.dtype == torch.float32
    assert torch.equal(new_master[:2, :64], old_master)  # copied entries: bit for bit, not rounded
    assert not torch.equal(old_master, old_master.bfloat16().float())  # (the masters carry more than bf16)

    new_model = ["model.ffn_hidden_size=96", "model.num_layers=3"]
    new = _trainer(tmp_path, "new", "train.precision=bf16", opt, *new_model)
    new.init_from(dst)
    chunk = unwrap_ddp(new.model[0])
    for i in range(2):
        param = chunk.decoder.layers[i].mlp.linear_fc1.weight
        assert torch.equal(_main_param(new, param)[:64], old_master[i]), f"layer {i}"
    emb = chunk.embedding.word_embeddings.weight
    assert torch.equal(
        _main_param(new, emb),
        old_ckpt.read(stored_master_key(old_ckpt, old_ckpt.dtype, "embedding.word_embeddings.weight")),
    )
    assert new.evaluate(1) == pytest.approx(old_loss, rel=BF16_REL)  # function kept at the transition (c = 0)
    assert all(map(lambda x: x == x, _losses(new, 2)))


def test_hidden_growth_carries_fp32_master_weights(tmp_path):
    """MSG on the hidden size with its heads (FLM-101B's 16B -> 51B step), bf16 with the distributed
    optimizer: the grown checkpoint's masters and the new optimizer's main parameters hold the old
    masters bit for bit in their leading block, and the engine's transition check (what a staged run
    verifies at scale) finds the function kept."""
    opt = "parallel.distributed_optimizer=true"
    old = _trainer(tmp_path, "old", "train.precision=bf16", opt)
    _losses(old, 3)
    src = old.save()
    reference = transition.record_reference(old, tmp_path / "old-stage", rank0=True)

    plan = grown_plan(old.cfg.model, {"hidden": "msg", "heads": "msg"}, hidden_size=64, num_attention_heads=8)
    dst = tmp_path / "grown"
    grow_checkpoint(src, dst, plan)
    old_ckpt, new_ckpt = TensorReader(src), TensorReader(dst)
    masters = {}
    for key in ("decoder.layers.mlp.linear_fc1.weight", "embedding.word_embeddings.weight"):
        masters[key] = old_ckpt.read(stored_master_key(old_ckpt, old_ckpt.dtype, key))
        new_master = new_ckpt.read(master_key(key))
        assert new_master.shape[-1] == 64 and new_master.dtype == torch.float32
        assert torch.equal(new_master[..., :32], masters[key]), key  # copied entries: bit for bit
    assert not torch.equal(masters[key], masters[key].bfloat16().float())  # (the masters carry more than bf16)

    new = _trainer(tmp_path, "new", "train.precision=bf16", opt, "model.hidden_size=64", "model.num_attention_heads=8")
    new.init_from(dst)
    chunk = unwrap_ddp(new.model[0])
    for i in range(2):
        main = _main_param(new, chunk.decoder.layers[i].mlp.linear_fc1.weight)
        assert torch.equal(main[:, :32], masters["decoder.layers.mlp.linear_fc1.weight"][i]), f"layer {i}"
    main = _main_param(new, chunk.embedding.word_embeddings.weight)
    assert torch.equal(main[:, :32], masters["embedding.word_embeddings.weight"])
    (tmp_path / "new-stage").mkdir()
    record = transition.check(new, reference, exact=True, stage_dir=tmp_path / "new-stage", rank0=True)
    assert record["preserved"] and record["tolerance"] == transition.ENGINE_TOLERANCE["bf16"]
    assert all(map(lambda x: x == x, _losses(new, 2)))
