"""make_trainer (training/engine/factory.py) builds the run's engine with its checkpoint_meta fields,
which every checkpoint records next to the divergence state; a resume restores the rollback count.
One megatron-engine process (world size 1) inside the test process."""

from __future__ import annotations

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.helpers import REPO
from training import checkpoint
from training.config import load_run_config
from training.data.source import MockSource
from training.engine.factory import make_trainer
from training.engine.trainer import Trainer

TINY = REPO / "configs" / "runs" / "tiny.yaml"


def _trainer(tmp_path, **kwargs):
    cfg = load_run_config(
        TINY, ["train.steps=2", "logging.progress_bar=false", "logging.tensorboard=false", f"output_dir={tmp_path}"]
    )
    src = MockSource(cfg.model.vocab_size, cfg.model.seq_length, seed=7)
    return make_trainer(cfg, train_source=src, valid_source=src, **kwargs)


def test_checkpoint_meta_fields_and_rollback_count_are_saved_and_resumed(tmp_path, one_thread):
    trainer = _trainer(tmp_path, checkpoint_meta={"stage": 1, "stage_name": "wide"})
    assert isinstance(trainer, Trainer)
    trainer.step()
    trainer.guard.rollbacks = 2  # as after two divergence rollbacks
    saved = trainer.save()
    meta = checkpoint.read_meta(saved)
    assert meta["stage"] == 1 and meta["stage_name"] == "wide" and meta["divergence"] == {"rollbacks": 2}

    resumed = _trainer(tmp_path)
    assert resumed.guard.rollbacks == 0
    resumed.load(saved)
    assert resumed.guard.rollbacks == 2 and resumed.step_count == 1
    assert "stage" not in resumed.checkpoint_meta()  # no checkpoint_meta: no extra fields
