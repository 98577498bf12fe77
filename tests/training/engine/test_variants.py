"""Every block variant builds, trains on mock data with a decreasing loss, and checkpoints
atomically. One process (world size 1) inside the test process."""

from __future__ import annotations

import pytest

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.helpers import REPO
from training import checkpoint
from training.config import load_run_config
from training.data.source import MockSource
from training.engine import megatron_checkpoint
from training.engine.trainer import Trainer
from training.engine.trainer_base import NonFiniteLossError

TINY = REPO / "configs" / "runs" / "tiny.yaml"

VARIANTS = {
    "layernorm-gelu-rope-tied": [],
    "rmsnorm-swiglu-rope-untied-nobias": [
        "model.normalization=RMSNorm",
        "model.activation=swiglu",
        "model.tie_embeddings=false",
        "model.bias=false",
    ],
    "layernorm-gelu-xpos": ["model.position_embedding=xpos", "model.xpos_scale_base=512"],
    "rmsnorm-gelu-xpos-gqa": [
        "model.normalization=RMSNorm",
        "model.position_embedding=xpos",
        "model.num_query_groups=2",
    ],
    "layernorm-swiglu-gqa-untied": [
        "model.activation=swiglu",
        "model.num_query_groups=1",
        "model.tie_embeddings=false",
    ],
    "mup-multipliers": ["model.input_multiplier=4.0", "model.output_multiplier=0.25"],
    "dropout-on": ["model.hidden_dropout=0.1", "model.attention_dropout=0.1"],
    "padded-vocab": ["model.vocab_size=500"],
    "recompute-selective": ["train.recompute=selective"],
    "recompute-full": ["train.recompute=full"],
}


def make_trainer(tmp_path, overrides):
    cfg = load_run_config(
        TINY,
        [
            "train.lr=1e-2",
            "train.warmup_steps=1",
            "train.steps=10",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            f"output_dir={tmp_path}",
            *overrides,
        ],
    )
    src = MockSource(cfg.model.vocab_size, cfg.model.seq_length, seed=7)
    return Trainer(cfg, train_source=src, valid_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 8))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_trains_with_decreasing_loss(tmp_path, name):
    trainer = make_trainer(tmp_path, VARIANTS[name])
    results = trainer.fit()
    losses = [r.loss for r in results]
    assert len(losses) == 10 and all(loss == loss for loss in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    assert trainer.evaluate() < losses[0]


def test_recomputation_gives_the_same_losses(tmp_path):
    plain = [r.loss for r in make_trainer(tmp_path / "a", ["train.steps=3"]).fit()]
    for mode in ("selective", "full"):
        again = [r.loss for r in make_trainer(tmp_path / mode, ["train.steps=3", f"train.recompute={mode}"]).fit()]
        assert again == pytest.approx(plain, rel=1e-6), mode


def test_padded_vocab_rows_get_no_probability(tmp_path):
    import torch

    trainer = make_trainer(tmp_path, ["model.vocab_size=500"])
    model = trainer.model[0].module
    tokens = torch.randint(0, 500, (2, 64))
    logits = model(tokens, torch.arange(64)[None].expand(2, -1), None)
    assert logits.shape[-1] == 512
    probs = logits.float().softmax(-1)
    assert probs[..., 500:].max().item() == 0.0


def test_save_is_atomic_and_never_overwrites(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, ["train.steps=3"])
    trainer.step()
    good = trainer.save()
    root = trainer.checkpoint_root()
    assert (root / "latest").read_text().strip() == good.name

    trainer.step()
    real_save = megatron_checkpoint.dist_checkpointing.save

    def crash(state, path):
        real_save(state, path)  # files are written ...
        raise OSError("disk full")  # ... but the process dies before the checkpoint is complete

    monkeypatch.setattr(megatron_checkpoint.dist_checkpointing, "save", crash)
    with pytest.raises(OSError):
        trainer.save()
    assert (root / "latest").read_text().strip() == good.name
    assert checkpoint.resolve(root) == good
    assert not (root / checkpoint.step_dir_name(2)).exists()
    assert (root / (checkpoint.step_dir_name(2) + ".partial")).exists()

    monkeypatch.setattr(megatron_checkpoint.dist_checkpointing, "save", real_save)
    second = trainer.save()
    assert second.name == checkpoint.step_dir_name(2)
    assert not (root / (second.name + ".partial")).exists()
    with pytest.raises(checkpoint.CheckpointError, match="refusing to overwrite"):
        trainer.save()


def test_nan_loss_raises_or_skips(tmp_path):
    import math

    trainer = make_trainer(tmp_path, ["train.lr=1e30", "train.warmup_steps=0", "train.clip_grad=0"])
    with pytest.raises(NonFiniteLossError, match="loss is (nan|inf) at step .*train.on_nan=skip"):
        for _ in range(5):
            trainer.step()
    skipper = make_trainer(
        tmp_path / "skip", ["train.lr=1e30", "train.warmup_steps=0", "train.clip_grad=0", "train.on_nan=skip"]
    )
    results = [skipper.step() for _ in range(5)]
    bad = [r for r in results if not math.isfinite(r.loss)]
    assert bad and all(r.skipped for r in bad)
