"""What the μP benches (bench/mup_transfer.py, bench/loss_prediction.py) share: the base run, its
overrides, and how a `flm mup sweep` / `flm predict` command is run and timed.

The base run is configs/runs/tiny.yaml (head dimension 16, FFN 4x) on the embedded default corpus
(vocab 2048), one layer, validation once at the last step on 8 batches. μP adds
`model.mup.base_width=<narrowest width>`: the narrowest proxy then has the same init, LRs and
multipliers in both parametrisations, and differs only in its attention scale (1/d_head against
1/sqrt(d_head)).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "configs" / "runs" / "tiny.yaml"
BASE = [
    "data.kind=default",
    "model.vocab_size=2048",
    "model.seq_length=32",
    "train.global_batch_size=16",
    "train.micro_batch_size=16",
    "train.warmup_steps=10",
    "train.min_lr=1e-5",  # the sweep keeps min_lr / lr for every grid LR
    "train.eval_interval=1000000",  # validation once, at the last step
    "train.eval_batches=8",
]


def overrides(kind: str, widths: str, layers: int, untied: bool, *extra: str) -> list[str]:
    """The run's overrides for parametrisation ``kind`` (``sp`` or ``mup``)."""
    out = [*BASE, f"model.num_layers={layers}", f"model.tie_embeddings={str(not untied).lower()}", *extra]
    if kind == "mup":
        out.append(f"model.mup.base_width={widths.split(',')[0]}")
    return out


def run_flm(args: list[str], kind: str, threads: int, result: Path) -> Optional[dict]:
    """Run ``python -m training.cli ARGS`` (torch threads ``threads``), print its time, and return
    the JSON it wrote to ``result``; None when the command failed (its error is on stderr)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "training.cli", *args], cwd=REPO, env=env)
    print(f"[{kind}] took {time.perf_counter() - t0:.0f} s (exit {proc.returncode})\n", flush=True)
    return json.loads(result.read_text()) if proc.returncode == 0 else None


def load_average() -> str:
    return f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
