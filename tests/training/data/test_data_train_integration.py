"""`flm train` with `data.kind: default` (end to end through the trainer; slow: starts megatron)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_flm_train_on_default_corpus(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "train",
        "configs/runs/tiny.yaml",
        "data.kind=default",
        f"data.default_dir={tmp_path / 'default'}",
        "train.steps=3",
        "logging.progress_bar=false",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    # a tokenizer of model.vocab_size was trained and the data was prepared for it
    assert (tmp_path / "default" / "prepared-bpe-v512" / "manifest.json").is_file()


@pytest.mark.slow
def test_flm_train_rejects_vocab_mismatch(tmp_path):
    from training.data.build import prepare_default_data

    info = prepare_default_data(tmp_path / "default", vocab_size=640)
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "train",
        "configs/runs/tiny.yaml",
        "data.kind=prepared",
        f"data.datasets=[{{path: {info.dataset_dir}, weight: 1.0}}]",
        "train.steps=1",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "model.vocab_size is 512 but the tokenizer" in proc.stderr and "set model.vocab_size: 640" in proc.stderr
