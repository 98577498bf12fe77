"""Loss prediction (μScaling): fit L(N) = a·N^b + c on four proxy widths at one step, predict a
width at least 4x the largest proxy, then train that width and compare, from `flm predict --measure`.

    python bench/loss_prediction.py [--widths 32,48,64,96] [--target-width 384] [--steps 300]
                                    [--lr 5e-3] [--only sp|mup] [--threads 1] [--out runs/bench-loss-prediction]

The base run is configs/runs/tiny.yaml (head dimension 16, FFN 4x) on the embedded default corpus
(vocab 2048) with the overrides in BASE; μP adds `model.mup.base_width=<narrowest width>`. Every
proxy and the target train `--steps` steps with the same LR, data order and seed; the loss is the
val_loss at the last step (8 validation batches). Prints, per parametrisation, the proxies' losses,
the fit, the prediction with its leave-one-out band, the measured loss and the error in % of it.
Goal: |error| <= 2 % (under μP; the standard parametrisation is printed for comparison).
Finished runs under --out are reused (delete the directory for a fresh measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "configs" / "runs" / "tiny.yaml"
BASE = [
    "data.kind=default",
    "model.vocab_size=2048",
    "model.seq_length=32",
    "train.global_batch_size=16",
    "train.micro_batch_size=16",
    "train.warmup_steps=10",
    "train.min_lr=1e-5",
    "train.eval_interval=1000000",  # validation once, at the last step
    "train.eval_batches=8",
]


def predict(kind: str, args, out: Path) -> dict:
    overrides = [*BASE, f"model.num_layers={args.layers}", f"train.lr={args.lr}"]
    if kind == "mup":
        overrides.append(f"model.mup.base_width={args.widths.split(',')[0]}")
    cmd = [sys.executable, "-m", "training.cli", "predict", str(RUN), *overrides, "--widths", args.widths]
    cmd += ["--steps", str(args.steps), "--step", str(args.steps), "--target-width", str(args.target_width)]
    cmd += ["--measure", "--out", str(out / kind)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    print(f"[{kind}] took {time.perf_counter() - t0:.0f} s\n", flush=True)
    return json.loads((out / kind / "predict.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="32,48,64,96")
    ap.add_argument("--target-width", type=int, default=384)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--only", choices=("sp", "mup"), default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: fastest for tiny models)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-loss-prediction"))
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    if args.target_width < 4 * max(widths):
        print(f"note: target width {args.target_width} is less than 4x the largest proxy ({max(widths)})")
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    kinds = [args.only] if args.only else ["sp", "mup"]
    ok = True
    for kind in kinds:
        data = predict(kind, args, Path(args.out))
        label = "μP" if kind == "mup" else "SP"
        lo, hi = data["band"] if data["band"] else (float("nan"), float("nan"))
        print(
            f"{label}: width {data['target']['width']} ({data['target']['params']:,} non-embedding params) at step "
            f"{data['step']}: predicted {data['predicted']:.4f} (leave-one-out {lo:.4f} .. {hi:.4f}), measured "
            f"{data['measured']:.4f}, error {data['error_pct']:+.2f}% (goal |error| <= 2%: "
            f"{'met' if abs(data['error_pct']) <= 2 else 'NOT met'})"
        )
        if kind == "mup":
            ok = abs(data["error_pct"]) <= 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
