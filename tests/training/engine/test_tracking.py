"""Experiment trackers (``training.engine.tracking``): W&B in offline mode and MLflow's file store,
read back from the files they wrote under the run directory. The trainer's records reach them as
they reach ``metrics.jsonl``; the config once; events; one tracker run per run directory; a missing
package is refused in one line naming the extra."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.helpers import TINY
from tests.trackers import mlflow_history, mlflow_run, profiled_steps, wandb_records
from training.config import LoggingConfig, MLflowConfig, WandbConfig, load_run_config
from training.data.source import MockSource
from training.engine import tracking
from training.engine.loop.profiler import PROFILE_DIR
from training.engine.trainer import Trainer

HAVE_WANDB = importlib.util.find_spec("wandb") is not None
HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_wandb = pytest.mark.skipif(not HAVE_WANDB, reason="wandb is not installed (pip install 'flm-grow[wandb]')")
needs_mlflow = pytest.mark.skipif(not HAVE_MLFLOW, reason="mlflow is not installed (pip install 'flm-grow[mlflow]')")

RECORDS = [
    {"step": 1, "loss": 5.5, "lr": 1e-3, "skipped": False, "tokens": 512, "mfu": None},
    {"step": 2, "loss": 5.25, "lr": 9e-4, "skipped": True, "tokens": 1024, "mfu": None, "skip_reason": "spike"},
]
CONFIG = {"name": "t", "train": {"lr": 1e-3, "steps": 2}, "stages": [{"tokens": 10}, {"tokens": 20}]}


def test_a_missing_package_is_refused_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(tracking.TrackerError) as err:
        tracking.check_available(LoggingConfig(mlflow=MLflowConfig()))
    assert str(err.value) == (
        "logging.mlflow is set but the mlflow package is not installed: "
        "pip install 'flm-grow[mlflow]' (or remove logging.mlflow)"
    )
    tracking.check_available(LoggingConfig())  # nothing configured: nothing needed


@needs_wandb
def test_wandb_offline_holds_the_records_the_config_once_and_events(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logging = LoggingConfig(wandb=WandbConfig())
    tracker = tracking.open_trackers(logging, run_dir=tmp_path, name="t", config=CONFIG)
    for record in RECORDS:
        tracker.log(record)
    tracker.event("growth", {"stage": 1, "new_params": 1000}, tokens=1024)
    tracker.close()
    # the same run directory continues the same W&B run (a resumed job, the next stage's job)
    again = tracking.open_trackers(logging, run_dir=tmp_path, name="t", config={"other": 1})
    again.close()
    rows, config, ids = wandb_records(tmp_path)
    assert rows[:2] == RECORDS
    assert rows[2] == {"growth/stage": 1, "growth/new_params": 1000, "tokens": 1024}
    assert config == CONFIG  # logged when the run was created, not again
    assert len(set(ids)) == 1 and json.loads((tmp_path / tracking.TRACKING_FILE).read_text())["wandb"] == ids[0]


@needs_mlflow
def test_mlflow_file_store_holds_the_records_the_config_once_and_events(tmp_path):
    logging = LoggingConfig(mlflow=MLflowConfig())
    tracker = tracking.open_trackers(logging, run_dir=tmp_path, name="t", config=CONFIG)
    for record in RECORDS:
        tracker.log(record)
    tracker.event("growth", {"stage": 1, "new_params": 1000, "stage_name": "g"}, tokens=1024)
    tracker.close()
    again = tracking.open_trackers(logging, run_dir=tmp_path, name="t", config={"other": 1})
    again.log({"step": 3, "loss": 5.0, "tokens": 1536})
    again.close()
    client, run = mlflow_run(tmp_path)
    assert run.info.run_name == "t" and run.info.status == "FINISHED"
    assert mlflow_history(client, run.info.run_id, "loss") == [(512, 5.5), (1024, 5.25), (1536, 5.0)]
    assert mlflow_history(client, run.info.run_id, "skipped") == [(512, 0.0), (1024, 1.0)]
    assert "mfu" not in run.data.metrics and "skip_reason" not in run.data.metrics  # numbers only
    assert mlflow_history(client, run.info.run_id, "growth/new_params") == [(1024, 1000.0)]
    assert run.data.params["train.lr"] == "0.001" and run.data.params["stages.1.tokens"] == "20"
    assert "other" not in run.data.params
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert json.loads((artifacts / "config.json").read_text()) == CONFIG
    event = json.loads((artifacts / "events" / "growth-1024.json").read_text())
    assert event == {"event": "growth", "tokens": 1024, "stage": 1, "new_params": 1000, "stage_name": "g"}


@needs_wandb
@needs_mlflow
def test_fit_gives_the_trackers_what_metrics_jsonl_gets_and_profiles_its_window(tmp_path, monkeypatch, one_thread):
    """One in-process run of 3 steps with both trackers and the profiler (steps 2..3)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_run_config(
        TINY,
        [
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "logging.wandb={}",
            "logging.mlflow={}",
            "logging.profile={start_step: 2, steps: 2}",
            "model.num_layers=2",
            "model.hidden_size=32",
            "model.ffn_hidden_size=64",
            "model.seq_length=16",
            "model.vocab_size=128",
            "train.precision=fp32",
            "train.steps=3",
            "train.eval_interval=2",
            f"output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0))
    tracker = tracking.open_trackers(cfg.logging, run_dir=tmp_path, name=cfg.name, config={"name": cfg.name})
    try:
        trainer.fit(tracker=tracker)
    finally:
        tracker.close()
    jsonl = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jsonl] == [1, 2, 3] and "val_loss" in jsonl[1]
    rows, _, _ = wandb_records(tmp_path)
    assert rows == jsonl
    client, run = mlflow_run(tmp_path)
    for key in ("loss", "val_loss", "grad_norm", "tokens_per_s"):
        expected = [(r["tokens"], r[key]) for r in jsonl if key in r]
        assert mlflow_history(client, run.info.run_id, key) == expected
    assert profiled_steps(tmp_path / PROFILE_DIR) == [[2, 3]]
