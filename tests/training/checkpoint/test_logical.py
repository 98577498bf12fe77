"""Logical checkpoints: read any layout's checkpoint as full tensors, write full tensors as a
checkpoint, and load weights + Adam moments from it under other layouts and optimizers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.helpers import REPO
from training import checkpoint
from training.checkpoint.logical import read_logical, write_logical
from training.config import load_run_config, run_config_to_dict
from training.data.source import MockSource
from training.engine.trainer import Trainer

TINY = REPO / "configs" / "runs" / "tiny.yaml"
WORKER = REPO / "tests" / "training" / "checkpoint" / "workers" / "init_and_save.py"


@pytest.fixture(scope="module")
def logical_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("logical")
    cfg = load_run_config(
        TINY,
        [
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            f"output_dir={root}/a",
            "model.activation=swiglu",
            "model.num_query_groups=2",
        ],
    )
    trainer = Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0))
    for _ in range(3):
        trainer.step()
    saved = trainer.save()
    params, moments = read_logical(saved)
    assert moments["exp_avg"] and set(moments["exp_avg"]) <= set(params)
    assert all(m.abs().sum() > 0 for m in moments["exp_avg_sq"].values())
    out = write_logical(
        root / "logical",
        params,
        {"config": run_config_to_dict(cfg), "step": 0, "consumed_samples": 0, "adam_step": 3},
        moments,
    )
    return out, params, moments


def test_write_refuses_to_overwrite(logical_ckpt, tmp_path):
    out, params, moments = logical_ckpt
    with pytest.raises(checkpoint.CheckpointError, match="refusing to overwrite"):
        write_logical(out, params, {"step": 0})


#: the layouts a logical checkpoint is loaded under (2 processes each) and saved again
LAYOUTS = {"tp2": ["parallel.tp=2"], "dp2-distopt": ["parallel.distributed_optimizer=true"], "pp2": ["parallel.pp=2"]}


@pytest.fixture(scope="module")
def resaved(logical_ckpt, tmp_path_factory):
    """``logical_ckpt`` loaded (``init_from``) and saved again under each of ``LAYOUTS`` by 2 gloo
    processes, all in one torchrun launch; {layout name: the checkpoint saved}."""
    out = logical_ckpt[0]
    root = tmp_path_factory.mktemp("resaved")
    jobs = {
        str(root / name): ["model.activation=swiglu", "model.num_query_groups=2", *o] for name, o in LAYOUTS.items()
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER), str(out)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([*cmd, json.dumps(jobs)], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {name: root / name for name in LAYOUTS}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_weights_and_moments_survive_any_layout(logical_ckpt, resaved, layout):
    out, params, moments = logical_ckpt
    params2, moments2 = read_logical(resaved[layout])
    for key, value in params.items():
        torch.testing.assert_close(params2[key], value, rtol=0, atol=0, msg=key)
    for m in ("exp_avg", "exp_avg_sq"):
        assert set(moments2[m]) == set(moments[m])
        for key, value in moments[m].items():
            torch.testing.assert_close(moments2[m][key], value, rtol=0, atol=0, msg=f"{m} {key}")
    assert checkpoint.read_meta(resaved[layout])["adam_step"] == 3
