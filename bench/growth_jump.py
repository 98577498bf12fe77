"""Where the post-growth loss jump comes from: one small stage, then the transition repeated with one
factor changed at a time, each measured over the ramp + 50 steps after growing.

    python bench/growth_jump.py [--variants base,lr_restart,...] [--out runs/bench-growth-jump] [--corpus pinned]

Setup: ``growth_vs_scratch.py --size large`` (2 x 96 -> 4 x 192 Llama-style, its pinned corpus, 4096
tokens/step, growth after 35% of the 4.35e13-FLOPs budget, ``lr_schedule: global``). The small stage
is trained once; every variant grows its final checkpoint (``flm train RUN --stage 1`` on a copy of
the run directory) and trains the final shape with validation every 10 steps until ramp + 50 steps.

Jump = highest validation loss in that window minus the small stage's last validation loss, in % of
the latter (the transition itself is exact: growth.json of each variant). Variants:

- ``base``: MSG on every dimension, depth interleaved by copy, ramp 50, the LR continuous (``global``);
- ``lr_restart``: as base, but the grown stage re-enters the schedule at its start (warmup from 0 to
  the peak again: the ``per_stage`` sawtooth) -- the LR's share;
- ``ramp200``: ramp 200 -- how fast the new weights are switched on;
- ``init_small``: new weights drawn with std 0.002 instead of 0.02 -- their scale;
- ``zero``: zero-initialised new weights (``default_operator: zero``) -- MSG's random ones;
- ``depth_fresh``: new layers drawn fresh instead of copied (a copy applies its block twice once the
  gate reaches 1);
- ``depth_zero``: MSG for the widths, new layers zero-initialised (identity blocks);
- ``zero_ramp200``, ``init_small_ramp200``, ``depth_zero_ramp200``: combinations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from growth_vs_scratch import REPO, SIZES, corpus_id, run_config, stages_for  # noqa: E402

VARIANTS = {
    "base": ({}, {}),
    "lr_restart": ({"equivalent_tokens": 0}, {"kind": "equivalent_step"}),
    "ramp200": ({"ramp": {"steps": 200}}, {}),
    "init_small": ({"init_std": 0.002}, {}),
    "zero": ({"default_operator": "zero"}, {}),
    "depth_fresh": ({"depth": {"init": "fresh"}}, {}),
    "depth_zero": ({"operators": {"depth": "zero"}}, {}),
    "zero_ramp200": ({"default_operator": "zero", "ramp": {"steps": 200}}, {}),
    "init_small_ramp200": ({"init_std": 0.002, "ramp": {"steps": 200}}, {}),
    "depth_zero_ramp200": ({"operators": {"depth": "zero"}, "ramp": {"steps": 200}}, {}),
}
FRACTION = 0.35
#: the base variant's ramp (the variants name their own); the defaults' 200 is the ``ramp200`` variant
BASE_RAMP = 50
SEED = 1234
EVAL_EVERY = 10


def variant_config(out: Path, name: str, growth: dict, schedule: dict) -> tuple[Path, int]:
    """(run YAML, ramp steps) of a variant: the base run with the grown stage's growth section and the
    run-level schedule changed."""
    size = SIZES["large"]
    flops = size.scratch_steps * size.tokens_per_step * _f_large()
    stages, _ = stages_for(size, FRACTION, flops, BASE_RAMP, growth)
    stages[1]["train"] = {"eval_interval": EVAL_EVERY}
    path = run_config(size, name, out, stages, schedule.get("kind", "global"), SEED)
    return path, stages[1]["growth"]["ramp"]["steps"]


def _f_large() -> float:
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token

    return flops_per_token(from_dict(ModelConfig, SIZES["large"].large))


def val_points(metrics: Path) -> list[tuple[int, float]]:
    if not metrics.is_file():
        return []
    points = []
    for line in metrics.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("val_loss") is not None:
            points.append((r["step"], r["val_loss"]))
    return points


def train_until(path: Path, stage_dir: Path, last_step: int) -> None:
    """``flm train path --stage 1``, stopped once ``stage_dir`` has a validation point at or past
    ``last_step`` (the process group is killed: nothing of the variant is kept but its metrics)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "train", str(path), "--stage", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while proc.poll() is None:
            points = val_points(stage_dir / "metrics.jsonl")
            if points and points[-1][0] >= last_step:
                break
            time.sleep(2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"variant {path.stem} failed with exit status {proc.returncode}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-growth-jump"))
    ap.add_argument(
        "--corpus",
        choices=["pinned", "large", "small"],
        default="pinned",
        help="data.default_corpus of the runs (default pinned: the same corpus on every machine)",
    )
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the small stage of an earlier invocation is reused: it must have trained on this corpus
    size = SIZES["large"]
    size.data = dict(size.data, default_corpus=args.corpus)
    corpus = corpus_id.prepare(size.data, size.large["vocab_size"])
    print(corpus_id.describe(corpus), flush=True)
    corpus_id.claim(out, corpus)

    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)

    base_path, _ = variant_config(out, "small-stage", {}, {})
    small_dir = out / "small-stage" / "stage0-small"
    if not (small_dir / "checkpoints" / "latest").exists():
        subprocess.run(
            [sys.executable, "-m", "training.cli", "train", str(base_path), "--stage", "0"],
            cwd=REPO,
            env=dict(os.environ, PYTHONWARNINGS="ignore"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    before = val_points(small_dir / "metrics.jsonl")[-1][1]
    rows = []
    for name in names:
        growth, schedule = VARIANTS[name]
        run_dir = out / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        path, ramp = variant_config(out, name, growth, schedule)
        run_dir.mkdir()
        shutil.copytree(small_dir, run_dir / "stage0-small", copy_function=os.link)
        started = time.perf_counter()
        train_until(path, run_dir / "stage1-large", ramp + 50)
        points = [p for p in val_points(run_dir / "stage1-large" / "metrics.jsonl") if p[0] <= ramp + 50]
        growth_record = json.loads((run_dir / "stage1-large" / "growth.json").read_text())
        worst = max(p[1] for p in points)
        rows.append(
            {
                "variant": name,
                "ramp": ramp,
                "jump": worst - before,
                "jump_pct": 100 * (worst - before) / before,
                "at_step": max(points, key=lambda p: p[1])[0],
                "end_loss": points[-1][1],
                "exact": growth_record["exact"],
                "wall_s": time.perf_counter() - started,
            }
        )
        print(
            f"{name}: jump {rows[-1]['jump']:+.4f} ({rows[-1]['jump_pct']:+.2f}%) at step {rows[-1]['at_step']}, "
            f"loss at step {points[-1][0]} {points[-1][1]:.4f}",
            flush=True,
        )
        shutil.rmtree(run_dir / "stage1-large" / "grown", ignore_errors=True)  # keep metrics, drop weights
        shutil.rmtree(run_dir / "stage1-large" / "checkpoints", ignore_errors=True)
    (out / "jump.json").write_text(
        json.dumps({"corpus": corpus, "pre_growth_val_loss": before, "rows": rows}, indent=2)
    )
    print(f"\n{corpus_id.describe(corpus)}")
    print(f"pre-growth validation loss {before:.4f} (small stage, {FRACTION:.0%} of the FLOPs)")
    print("| variant | ramp | jump (nats) | jump (% of pre-growth) | worst at step | loss at ramp + 50 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['ramp']} | {r['jump']:+.4f} | {r['jump_pct']:+.2f}% | {r['at_step']} "
            f"| {r['end_loss']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
