"""Loss prediction (μScaling): fit L(N) = a·N^b + c on four proxy widths at one step, predict a
width at least 4x the largest proxy, then train that width and compare, from `flm predict --measure`.

    python bench/loss_prediction.py [--widths 32,48,64,96] [--target-width 384] [--steps 300]
                                    [--lr 5e-3] [--seeds 1,2,3] [--only sp|mup] [--threads 1] [--out runs/bench-loss-prediction]

The base run and its overrides: bench/mup_proxy_base.py. Every proxy and the target train
`--steps` steps with the same LR and data order, at each of `--seeds` (init seeds); the loss is the
val_loss at the last step (8 validation batches), averaged over the seeds. Prints, per
parametrisation, the proxies' losses, the fit, the prediction with its leave-one-out band, the
measured loss and the error in % of it, beside the error of the naive guess "the widest proxy's
loss" (how much the fit adds).
Goal: |error| <= 2 % (under μP; the standard parametrisation is printed for comparison).
Finished runs under --out are reused (delete the directory for a fresh measurement).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mup_proxy_base import REPO, RUN, load_average, overrides, run_flm


def predict(kind: str, args, out: Path) -> dict:
    cmd = ["predict", str(RUN), *overrides(kind, args.widths, args.layers, args.untied, f"train.lr={args.lr}")]
    cmd += ["--widths", args.widths, "--steps", str(args.steps), "--step", str(args.steps)]
    cmd += ["--target-width", str(args.target_width), "--seeds", args.seeds, "--measure", "--out", str(out / kind)]
    return run_flm(cmd, kind, args.threads, out / kind / "predict.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="32,48,64,96")
    ap.add_argument("--target-width", type=int, default=384)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seeds", default="1,2,3", help="init seeds; losses are averaged over them")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument(
        "--tied", dest="untied", action="store_false", help="tie the embedding and the readout (default: untied)"
    )
    ap.add_argument("--only", choices=("sp", "mup"), default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: fastest for tiny models)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-loss-prediction"))
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    if args.target_width < 4 * max(widths):
        print(f"note: target width {args.target_width} is less than 4x the largest proxy ({max(widths)})")
    print(load_average(), flush=True)
    kinds = [args.only] if args.only else ["sp", "mup"]
    ok = True
    for kind in kinds:
        data = predict(kind, args, Path(args.out))
        label = "μP" if kind == "mup" else "SP"
        if data is None:
            print(f"{label}: no prediction: flm predict failed (its error is above)")
            ok = ok and kind != "mup"
            continue
        lo, hi = data["band"] if data["band"] else (float("nan"), float("nan"))
        print(
            f"{label}: width {data['target']['width']} ({data['target']['params']:,} non-embedding params) at step "
            f"{data['step']}: predicted {data['predicted']:.4f} (leave-one-out {lo:.4f} .. {hi:.4f}), measured "
            f"{data['measured']:.4f}, error {data['error_pct']:+.2f}% (goal |error| <= 2%: "
            f"{'met' if abs(data['error_pct']) <= 2 else 'NOT met'})"
        )
        first, naive = data["proxies"][0]["loss"], data["proxies"][-1]["loss"]
        print(
            f"    naive guess, the widest proxy's loss {naive:.4f}: error "
            f"{100 * (naive - data['measured']) / data['measured']:+.2f}%; the proxies' losses span "
            f"{100 * (first - naive) / naive:.1f}%"
        )
        if kind == "mup":
            ok = abs(data["error_pct"]) <= 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
