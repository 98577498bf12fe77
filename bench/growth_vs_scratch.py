"""Growth vs scratch: the same final shape on the same data, (a) trained from scratch and (b) grown
from a small model (MSG, default LR policy), side by side.

    python bench/growth_vs_scratch.py [--scratch-steps 300] [--small-steps 300] [--grown-steps 200]
                                      [--out runs/bench-growth] [--lr-policy inherit]

Reports, on the embedded default corpus:
- FLOPs each run needs to reach the from-scratch run's final validation loss L*: scratch = its
  total FLOPs; grown = the FLOPs (small stage included) at the first validation point *of the
  final-shape stage* with loss <= L* (linear interpolation between validation points; crossings by
  the small stage do not count). Speedup = FLOPs_scratch / FLOPs_grown - 1 (goal >= 0.5, i.e. 1.5x).
- the loss bump after the growth: the highest validation loss in the ramp window after the
  transition minus the validation loss just before it (goal <= 1% of the pre-growth loss).
- a plot of both validation curves against FLOPs (growth_vs_scratch.png in --out).
FLOPs per token: training/metrics.py (6 x matmul params + attention), the same for both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SMALL = {
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 256,
    "num_attention_heads": 4,
    "vocab_size": 2048,
    "seq_length": 128,
}
LARGE = {
    "num_layers": 4,
    "hidden_size": 128,
    "ffn_hidden_size": 512,
    "num_attention_heads": 8,
    "vocab_size": 2048,
    "seq_length": 128,
}
TRAIN = {
    "global_batch_size": 16,
    "micro_batch_size": 8,
    "lr": 2.0e-3,
    "min_lr": 2.0e-4,
    "warmup_steps": 20,
    "eval_interval": 10,
    "eval_batches": 4,
}
TOKENS_PER_STEP = TRAIN["global_batch_size"] * LARGE["seq_length"]


def run_config(name: str, out: Path, stages: list[dict]) -> Path:
    cfg = {
        "name": name,
        "output_dir": str(out / name),
        "data": {"kind": "default", "seed": 1234},
        "train": TRAIN,
        "logging": {"progress_bar": False, "tensorboard": False},
        "checkpoint": {"save_interval": 0, "keep_last": 1},
        "stages": stages,
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(path: Path) -> None:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, "-m", "training.cli", "train", str(path)], cwd=REPO, env=env, check=True)


def val_curve(stage_dir: Path, flops_per_token: float, flops_offset: float, stage: int) -> list[tuple]:
    points = []
    for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("val_loss") is not None:
            points.append(
                (flops_offset + r["step"] * TOKENS_PER_STEP * flops_per_token, r["val_loss"], stage, r["step"])
            )
    return points


def first_crossing(points: list[tuple], target: float):
    prev = None
    for p in points:
        if p[1] <= target:
            if prev is None:
                return p[0]
            (x0, y0), (x1, y1) = prev[:2], p[:2]
            return x0 + (x1 - x0) * (y0 - target) / (y0 - y1) if y0 != y1 else x1
        prev = p
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch-steps", type=int, default=300)
    ap.add_argument("--small-steps", type=int, default=300)
    ap.add_argument("--grown-steps", type=int, default=200)
    ap.add_argument("--ramp-steps", type=int, default=20)
    ap.add_argument("--lr-policy", default="inherit", choices=["inherit", "rewind", "restart"])
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-growth"))
    args = ap.parse_args()

    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    f_small = flops_per_token(from_dict(ModelConfig, SMALL))
    f_large = flops_per_token(from_dict(ModelConfig, LARGE))

    scratch = run_config(
        "scratch", out, [{"name": "large", "model": LARGE, "tokens": args.scratch_steps * TOKENS_PER_STEP}]
    )
    grown = run_config(
        "grown",
        out,
        [
            {"name": "small", "model": SMALL, "tokens": args.small_steps * TOKENS_PER_STEP},
            {
                "name": "large",
                "model": LARGE,
                "tokens": args.grown_steps * TOKENS_PER_STEP,
                "train": {"warmup_steps": 5},
                "growth": {
                    "default_operator": "msg",
                    "depth_placement": "interleave",
                    "ramp_steps": args.ramp_steps,
                    "lr_policy": args.lr_policy,
                },
            },
        ],
    )
    train(scratch)
    train(grown)

    s_curve = val_curve(out / "scratch" / "stage0-large", f_large, 0.0, 0)
    small_flops = args.small_steps * TOKENS_PER_STEP * f_small
    g_small = val_curve(out / "grown" / "stage0-small", f_small, 0.0, 0)
    g_large = val_curve(out / "grown" / "stage1-large", f_large, small_flops, 1)
    target = s_curve[-1][1]
    flops_scratch = args.scratch_steps * TOKENS_PER_STEP * f_large
    flops_grown = first_crossing(g_large, target)

    before = g_small[-1][1]
    window = [p[1] for p in g_large if p[3] <= args.ramp_steps + TRAIN["eval_interval"]]
    bump = max(window) - before if window else float("nan")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p[0] for p in s_curve], [p[1] for p in s_curve], "o-", ms=3, label="from scratch (final shape)")
    ax.plot(
        [p[0] for p in g_small + g_large], [p[1] for p in g_small + g_large], "o-", ms=3, label="grown (small -> final)"
    )
    ax.axvline(small_flops, color="k", ls="--", lw=0.8, label="growth")
    ax.axhline(target, color="gray", ls=":", lw=0.8, label="scratch final val loss")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "growth_vs_scratch.png", dpi=120)

    print(f"final shape {LARGE}; small shape {SMALL}; {TOKENS_PER_STEP} tokens/step; lr policy {args.lr_policy}")
    print(f"scratch: {args.scratch_steps} steps, final val loss L* = {target:.4f}, FLOPs {flops_scratch:.3e}")
    print(
        f"grown:   {args.small_steps} small + {args.grown_steps} final-shape steps; final val loss {g_large[-1][1]:.4f}"
    )
    if flops_grown is None:
        print("grown run did not reach L* with the final-shape model: speedup < 1x at this budget")
    else:
        print(
            f"grown FLOPs to reach L*: {flops_grown:.3e} -> speedup FLOPs_scratch/FLOPs_grown - 1 = "
            f"{flops_scratch / flops_grown - 1:.2f} ({flops_scratch / flops_grown:.2f}x; goal >= 1.5x)"
        )
    print(
        f"loss bump after growth: {bump:+.4f} nats ({100 * bump / before:+.2f}% of the pre-growth val loss "
        f"{before:.4f}; goal <= 1%)"
    )
    print(f"plot: {out / 'growth_vs_scratch.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
