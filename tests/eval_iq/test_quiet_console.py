"""A tiny `flm train`, `flm grow` and `flm iq` print no third-party warnings by default (they are
filtered at the CLI entry, training/log.py); `--verbose` shows them again."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

NOISE = re.compile(r"Warning|warnings\.warn|deprecated|not installed|Falling back|Custom kwargs", re.I)
PLAN = """new: {layers: 4, hidden: 128, ffn: 512, heads: 8, query_groups: 8, head_dim: 16, vocab: 512}
operators: {hidden: msg, ffn: msg, heads: msg, depth: msg}
ramp: {steps: 10}
"""


def run_flm(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def noise(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if NOISE.search(line)]


@pytest.mark.slow
def test_train_grow_and_iq_print_no_third_party_warnings(tmp_path, tiny_llama_dir):
    run = tmp_path / "run"
    train = run_flm(
        "train",
        str(REPO / "configs" / "runs" / "tiny.yaml"),
        "train.steps=2",
        f"output_dir={run}",
        "logging.progress_bar=false",
    )
    (tmp_path / "plan.yaml").write_text(PLAN)
    grow = run_flm("grow", str(run / "checkpoints"), str(tmp_path / "grown"), "--plan", str(tmp_path / "plan.yaml"))
    iq = run_flm(
        "iq",
        "--model",
        "hf",
        "--model-path",
        str(tiny_llama_dir),
        "--subtasks",
        "counting",
        "--limit",
        "2",
        "--output-dir",
        str(tmp_path / "iq"),
    )
    assert (noise(train), noise(grow), noise(iq)) == ([], [], [])
    loud = run_flm(
        "--verbose",
        "train",
        str(REPO / "configs" / "runs" / "tiny.yaml"),
        "train.steps=1",
        f"output_dir={tmp_path / 'loud'}",
        "logging.progress_bar=false",
    )
    assert noise(loud), "--verbose should show the third-party warnings again"
