"""``make gpu-check``'s code path, shrunk (``--smoke``: tiny shapes, CPU allowed): every check of the
GPU run executes and passes here (the two bf16 growths, FFN + depth and hidden size, included), so
the GPU run fails only for GPU reasons."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO


def test_gpu_check_smoke_run_passes(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "run", "--smoke", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    names = [c["check"].split(" ")[0] for c in report["checks"]]
    assert names == ["train", "train", "train", "resume", "train", "resume", "grow", "grow", f"{names[-1]}"]
    assert all(c["ok"] for c in report["checks"])
    grows = [c for c in report["checks"] if c["check"].startswith("grow")]
    assert "depth 2->3" in grows[0]["check"] and "hidden 64->96" in grows[1]["check"]  # 16B -> 51B's kind
    for grow in grows:  # the engine's transition check (bf16 tolerance) and the masters bit for bit
        assert grow["fp32_masters_carried"] and grow["rel"] <= grow["tolerance"] == 5e-3
    assert "tokens_per_s" in report["checks"][-1]


def test_gpu_check_watchdog_dumps_stacks_and_fails(tmp_path):
    """A hung check must not eat the GPU session: past --timeout the run prints where every thread is
    and exits non-zero (here the watchdog fires while the checks are still importing torch)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    script = str(REPO / "bench" / "gpu_check.py")
    cmd = [sys.executable, script, "run", "--in-process", "--smoke", "--timeout", "0.2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Timeout" in proc.stderr and "run_checks" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "gpu-check.json").exists()
