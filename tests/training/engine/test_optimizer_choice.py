"""The Adam implementation is explicit (``train.optimizer_impl``): torch's AdamW is used also where
megatron-core would pick a FusedAdam (simulated here: no TE/Apex on this machine), ``fused`` takes
it, and growth refuses to carry its state into a FusedAdam with a clear message."""

from __future__ import annotations

import pytest
import torch
from megatron.core import optimizer as megatron_optimizer

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.helpers import REPO
from training.config import load_run_config
from training.config_base import ConfigError
from training.data.source import MockSource
from training.engine.optim import OptimizerChoiceError, inner_optimizers
from training.engine.trainer import Trainer
from training.orchestration.stage_plans import load_run

TINY = REPO / "configs" / "runs" / "tiny.yaml"
COMMON = [
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.ffn_hidden_size=64",
    "model.seq_length=16",
    "model.vocab_size=128",
    "train.precision=fp32",
]


class FakeFusedAdam(torch.optim.AdamW):
    """Stands in for TE's / Apex's FusedAdam (same constructor signature as megatron calls it)."""

    def __init__(self, params, adam_w_mode=True, **kwargs):
        super().__init__(params, **kwargs)


def _trainer(tmp_path, *overrides):
    cfg = load_run_config(TINY, [*COMMON, f"output_dir={tmp_path}", *overrides])
    return Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0))


@pytest.fixture
def fused_installed(monkeypatch):
    monkeypatch.setattr(megatron_optimizer, "USING_PYTORCH_OPTIMIZER", False)
    monkeypatch.setattr(megatron_optimizer, "Adam", FakeFusedAdam)


def test_torch_adamw_is_used_where_megatron_would_pick_fused_adam(tmp_path, fused_installed):
    trainer = _trainer(tmp_path / "torch")
    assert {type(o) for o in inner_optimizers(trainer.optimizer)} == {torch.optim.AdamW}
    assert megatron_optimizer.USING_PYTORCH_OPTIMIZER is False  # megatron's own choice left as it was


def test_fused_adam_is_taken_but_growth_refuses_to_carry_its_state(tmp_path, fused_installed):
    ckpt = _trainer(tmp_path / "src").save()
    fused = _trainer(tmp_path / "fused", "train.optimizer_impl=fused")
    assert {type(o) for o in inner_optimizers(fused.optimizer)} == {FakeFusedAdam}
    fused.init_from(ckpt)  # weights only: fine
    with pytest.raises(OptimizerChoiceError, match="growth cannot carry"):
        fused.init_from(ckpt, moments=True)


def test_fused_without_te_or_apex_is_refused(tmp_path):
    with pytest.raises(OptimizerChoiceError, match="neither is importable"):
        _trainer(tmp_path, "train.optimizer_impl=fused")


def test_growth_run_with_fused_adam_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="growth cannot carry") as err:
        load_run(REPO / "configs" / "runs" / "dryrun.yaml", ["train.optimizer_impl=fused"])
    assert err.value.key.endswith("train.optimizer_impl")
