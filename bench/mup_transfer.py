"""μP hyperparameter transfer: the best learning rate of a narrow and a wide proxy, under μP and
under the standard parametrisation (SP), from `flm mup sweep`.

    python bench/mup_transfer.py [--widths 64,256] [--lr 8.84e-4,...] [--layers 4] [--steps 150] [--seeds 1]
                                 [--only sp|mup] [--threads 1] [--out runs/bench-mup-transfer]

The base run and its overrides: bench/mup_proxy_base.py. For each parametrisation the sweep
trains every (width, lr, seed) proxy in its own process and reads its final val_loss; the bench
prints both tables, the best LR per width, and the shift of the best LR from the narrowest to the
widest width in grid steps. Goal: under μP the shift is at most one grid step; under SP it is not.
Finished proxies under --out are reused (delete the directory for a fresh measurement).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mup_proxy_base import REPO, RUN, load_average, overrides, run_flm


def sweep(kind: str, args, out: Path) -> dict:
    cmd = ["mup", "sweep", str(RUN), *overrides(kind, args.widths, args.layers, args.untied, "train.lr=1e-3")]
    cmd += ["--widths", args.widths, "--lr", args.lr, "--steps", str(args.steps), "--out", str(out / kind)]
    if args.seeds:
        cmd += ["--seeds", args.seeds]
    return run_flm(cmd, kind, args.threads, out / kind / "sweep.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="64,256")
    ap.add_argument(
        "--lr",
        default="8.84e-4,1.25e-3,1.77e-3,2.5e-3,3.54e-3,5e-3,7.07e-3",
        help="grid, spaced x sqrt(2) (under SP, theory moves the optimum by 1/m: 4 steps from width 64 to 256)",
    )
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", default=None, help="init seeds, e.g. 1,2 (default: the run's)")
    ap.add_argument(
        "--layers", type=int, default=4, help="proxy depth (4: hidden matrices hold most parameters; 1 is 4x faster)"
    )
    ap.add_argument("--untied", action="store_true", help="untie the embedding and the readout (default: tied)")
    ap.add_argument("--only", choices=("sp", "mup"), default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (1: fastest for tiny models)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-mup-transfer"))
    args = ap.parse_args()
    out = Path(args.out)
    print(load_average(), flush=True)
    kinds = [args.only] if args.only else ["sp", "mup"]
    results = {kind: sweep(kind, args, out) for kind in kinds}
    if any(data is None for data in results.values()):
        print("a sweep failed (its error is above)")
        return 1
    narrow, wide = args.widths.split(",")[0], args.widths.split(",")[-1]
    ok = True
    for kind, data in results.items():
        best = data["best_lr"]
        shift = data["shift_grid_steps"]
        label = "μP" if kind == "mup" else "SP"
        print(
            f"{label}: best lr at width {narrow} = {best[narrow]}, at width {wide} = {best[wide]}; "
            f"shift {shift:+d} grid steps",
            end="",
        )
        if kind == "mup":
            good = abs(shift) <= 1
            print(f"  (goal: within one grid step: {'met' if good else 'NOT met'})")
        else:
            good = abs(shift) >= 2
            print(f"  (goal: more than one grid step: {'met' if good else 'NOT met'})")
        ok = ok and good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
