"""A tracked, profiled staged run through the real CLI: one W&B (offline) run and one MLflow run
for the whole growth run, holding both stages' records, the resolved config and the growth
transition as an event; every stage profiles its own window."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bench.staged_run import write_staged_run
from tests.helpers import flm, read_metrics
from tests.trackers import mlflow_history, mlflow_run, profiled_steps, wandb_records
from training.config import run_config_to_dict
from training.engine.tracking import TRACKING_FILE
from training.orchestration.stage_plans import load_run

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is None or importlib.util.find_spec("mlflow") is None,
    reason="needs wandb and mlflow (pip install 'flm-grow[wandb,mlflow]')",
)


def test_a_staged_run_is_one_tracker_run_with_its_growth_event(tmp_path):
    out = tmp_path / "run"
    path = write_staged_run(
        tmp_path / "run.yaml",
        out,
        "name=tracked",
        "logging.wandb={}",
        "logging.mlflow={}",
        "logging.profile={start_step: 2, steps: 1}",
    )
    flm("train", str(path), env={"WANDB_MODE": "offline"})
    stage_dirs = [out / "stage0-s", out / "stage1-g"]
    jsonl = [r for d in stage_dirs for r in read_metrics(d)]
    assert len(jsonl) == 2 + 6
    growth = json.loads((out / "stage1-g" / "growth.json").read_text())
    check = json.loads((out / "stage1-g" / "transition_check.json").read_text())
    at = jsonl[1]["tokens"]  # the grown stage starts where the first one stopped

    rows, config, ids = wandb_records(out)
    assert len(set(ids)) == 1 and json.loads((out / TRACKING_FILE).read_text())["wandb"] == ids[0]
    events = [r for r in rows if "growth/stage" in r]
    assert [r for r in rows if "growth/stage" not in r] == jsonl
    assert events == [
        {
            "growth/stage": 1,
            "growth/stage_name": "g",
            "growth/old_params": growth["old_params"],
            "growth/new_params": growth["new_params"],
            "growth/exact": True,
            "growth/preserved": True,
            "growth/check_old_loss": check["old_loss"],
            "growth/check_new_loss": check["new_loss"],
            "growth/check_rel_dloss": check["rel_dloss"],
            "growth/check_preserved": True,
            "tokens": at,
        }
    ]
    assert config == json.loads(json.dumps(run_config_to_dict(load_run(path, []).config)))

    client, run = mlflow_run(out)
    assert mlflow_history(client, run.info.run_id, "loss") == [(r["tokens"], r["loss"]) for r in jsonl]
    assert mlflow_history(client, run.info.run_id, "growth/new_params") == [(at, float(growth["new_params"]))]
    assert run.data.params["stages.1.growth.default_operator"] == "msg"

    assert [profiled_steps(d / "profile") for d in stage_dirs] == [[[2]], [[2]]]
