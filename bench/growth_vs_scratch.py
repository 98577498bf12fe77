"""Growth vs scratch: the same final shape on the same data and FLOPs budget, (a) trained from scratch
and (b) grown from a small model, side by side, over seeds, LR schedules and growth points.

    python bench/growth_vs_scratch.py                      # --size small: the toy budget (4.3e12 FLOPs)
    python bench/growth_vs_scratch.py --size large         # 10x: Llama-style, large corpus, 2 seeds
        [--seeds 1,2] [--schedules global,equivalent_step,per_stage] [--fractions 0.25,0.35]
        [--ramp-steps N] [--out runs/bench-growth-large]

Sizes:
- small: 2 x 64 -> 4 x 128 (LayerNorm, GELU, tied), 2048 tokens/step, the embedded default corpus
  (0.95M tokens; repeated), 4.3e12 FLOPs per run.
- large: 2 x 96 -> 4 x 192 (RMSNorm, SwiGLU, RoPE, untied, no bias), 4096 tokens/step, 4.35e13
  FLOPs per run (10x), the large default corpus (``data.default_corpus: large``, ~22M tokens at a
  2048 vocabulary: no run repeats a token), validation on 16k tokens every 50 steps.

Runs: from scratch once per seed; grown for every (schedule, fraction) with the first seed, and the
first (schedule, fraction) -- the recommended one -- with every seed. Every grown run spends the
scratch run's FLOPs: ``fraction`` of them in the small stage, the rest in the final shape.

Reports per grown configuration (mean and spread over its seeds, each seed against the scratch run
of the same seed):
- FLOPs to reach the scratch final validation loss L*: the FLOPs (small stage included) at the
  first validation point *of the final-shape stage* at or below L* (linear interpolation; the small
  stage's crossings do not count); as a fraction of the scratch FLOPs and as a speedup;
- the same in wall-clock (each run's summed step times, evaluation excluded);
- the final validation loss of both at equal FLOPs;
- the post-growth bump: highest validation loss in the ramp + 50 steps after the transition minus
  the last validation loss before it, in % of the latter.
FLOPs per token: ``training.model_size.flops_per_token`` (6 x matmul params + attention).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Size:
    small: dict
    large: dict
    train: dict
    data: dict
    scratch_steps: int
    seeds: list[int]
    fractions: list[float]
    schedules: list[str]
    ramp_steps: int
    warmup_steps: int
    growth: dict = field(default_factory=dict)

    @property
    def tokens_per_step(self) -> int:
        return self.train["global_batch_size"] * self.large["seq_length"]


SIZES = {
    "small": Size(
        small={
            "num_layers": 2,
            "hidden_size": 64,
            "ffn_hidden_size": 256,
            "num_attention_heads": 4,
            "vocab_size": 2048,
            "seq_length": 128,
        },
        large={
            "num_layers": 4,
            "hidden_size": 128,
            "ffn_hidden_size": 512,
            "num_attention_heads": 8,
            "vocab_size": 2048,
            "seq_length": 128,
        },
        train={
            "global_batch_size": 16,
            "micro_batch_size": 8,
            "lr": 2.0e-3,
            "min_lr": 2.0e-4,
            "eval_interval": 10,
            "eval_batches": 4,
        },
        data={"kind": "default", "seed": 1234},
        scratch_steps=300,
        seeds=[1234],
        fractions=[0.6],
        schedules=["per_stage"],
        ramp_steps=20,
        warmup_steps=20,
    ),
    "large": Size(
        small={
            "num_layers": 2,
            "hidden_size": 96,
            "ffn_hidden_size": 256,
            "num_attention_heads": 3,
            "vocab_size": 2048,
            "seq_length": 128,
            "normalization": "RMSNorm",
            "activation": "swiglu",
            "position_embedding": "rope",
            "tie_embeddings": False,
            "bias": False,
        },
        large={
            "num_layers": 4,
            "hidden_size": 192,
            "ffn_hidden_size": 512,
            "num_attention_heads": 6,
            "vocab_size": 2048,
            "seq_length": 128,
            "normalization": "RMSNorm",
            "activation": "swiglu",
            "position_embedding": "rope",
            "tie_embeddings": False,
            "bias": False,
        },
        train={
            "global_batch_size": 32,
            "micro_batch_size": 32,
            "lr": 3.0e-3,
            "min_lr": 3.0e-4,
            "eval_interval": 50,
            "eval_batches": 4,
        },
        data={"kind": "default", "default_corpus": "large", "seed": 1234},
        scratch_steps=750,
        seeds=[1234, 5678],
        fractions=[0.35, 0.25],
        schedules=["global", "equivalent_step", "per_stage"],
        ramp_steps=200,
        warmup_steps=100,
    ),
}


def run_config(size: Size, name: str, out: Path, stages: list[dict], schedule: str, seed: int) -> Path:
    """A staged run YAML under ``out``; ``schedule`` is the run-level ``lr_schedule.kind``."""
    train = dict(size.train, seed=seed, warmup_steps=size.warmup_steps)
    cfg = {
        "name": name,
        "output_dir": str(out / name),
        "data": dict(size.data, seed=seed),
        "train": train,
        "logging": {"progress_bar": False, "tensorboard": False},
        "checkpoint": {"save_interval": 0, "keep_last": 1},
        "lr_schedule": {"kind": schedule, "warmup_tokens": size.warmup_steps * size.tokens_per_step},
        "stages": stages,
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def growth_section(size: Size, ramp_steps: int, overrides: dict | None = None) -> dict:
    section = {"default_operator": "msg", "depth_placement": "interleave", "ramp_steps": ramp_steps}
    section.update(size.growth)
    section.update(overrides or {})
    return section


def stages_for(size: Size, fraction: float | None, scratch_flops: float, ramp_steps: int, growth: dict | None):
    """(stages, small steps): the scratch run's single stage, or small + grown at equal FLOPs."""
    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token

    tps = size.tokens_per_step
    if fraction is None:
        return [{"name": "large", "model": size.large, "tokens": size.scratch_steps * tps}], 0
    f_small = flops_per_token(from_dict(ModelConfig, size.small))
    f_large = flops_per_token(from_dict(ModelConfig, size.large))
    small_steps = round(fraction * scratch_flops / (f_small * tps))
    large_steps = round((scratch_flops - small_steps * tps * f_small) / (f_large * tps))
    return [
        {"name": "small", "model": size.small, "tokens": small_steps * tps},
        {
            "name": "large",
            "model": size.large,
            "tokens": large_steps * tps,
            "growth": growth_section(size, ramp_steps, growth),
        },
    ], small_steps


def train(path: Path, *extra: str) -> float:
    """Run ``flm train`` on ``path``; returns the wall-clock seconds."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "training.cli", "train", str(path), *extra],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def train_or_continue(path: Path, run_dir: Path) -> float:
    """Train the run, keeping the stages ``run_dir`` already completed (``stages.jsonl``): the stages
    after them are removed and the run resumes there, so a stage whose settings changed is redone."""
    record = run_dir / "stages.jsonl"
    done = len(record.read_text().splitlines()) if record.is_file() else 0
    if done == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        return train(path)
    for stage_dir in run_dir.glob("stage*-*"):
        if int(stage_dir.name[len("stage") :].split("-")[0]) >= done:
            shutil.rmtree(stage_dir)
    return train(path, "--resume")


@dataclass
class Point:
    flops: float
    wall: float
    loss: float
    stage: int
    step: int


def curve(stage_dir: Path, flops_per_token: float, tokens_per_step: int, flops0: float, wall0: float, stage: int):
    """Validation points of one stage: FLOPs and step wall-clock (cumulative, from the run's start)."""
    points, wall = [], wall0
    for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        wall += r.get("step_time_s") or 0.0
        if r.get("val_loss") is not None:
            points.append(
                Point(flops0 + r["step"] * tokens_per_step * flops_per_token, wall, r["val_loss"], stage, r["step"])
            )
    return points


def crossing(points: list[Point], target: float, attr: str) -> float | None:
    """``attr`` (flops or wall) at the first point at or below ``target``, interpolated linearly."""
    prev = None
    for p in points:
        if p.loss <= target:
            if prev is None:
                return getattr(p, attr)
            x0, x1 = getattr(prev, attr), getattr(p, attr)
            return x0 + (x1 - x0) * (prev.loss - target) / (prev.loss - p.loss) if prev.loss != p.loss else x1
        prev = p
    return None


def run_curves(size: Size, run_dir: Path, grown: bool) -> tuple[list[Point], list[Point]]:
    """(small-stage points, final-shape points) of a run (scratch: no small stage)."""
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token

    tps = size.tokens_per_step
    f_large = flops_per_token(from_dict(ModelConfig, size.large))
    if not grown:
        return [], curve(run_dir / "stage0-large", f_large, tps, 0.0, 0.0, 0)
    f_small = flops_per_token(from_dict(ModelConfig, size.small))
    small = curve(run_dir / "stage0-small", f_small, tps, 0.0, 0.0, 0)
    steps0 = sum(1 for _ in (run_dir / "stage0-small" / "metrics.jsonl").open())
    wall0 = sum(json.loads(x).get("step_time_s") or 0.0 for x in (run_dir / "stage0-small" / "metrics.jsonl").open())
    large = curve(run_dir / "stage1-large", f_large, tps, steps0 * tps * f_small, wall0, 1)
    return small, large


def bump_of(small: list[Point], large: list[Point], ramp_steps: int) -> tuple[float, float]:
    """(bump in nats, in % of the pre-growth loss) over the ramp + 50 steps after the transition."""
    before = small[-1].loss
    window = [p.loss for p in large if p.step <= ramp_steps + 50]
    bump = max(window) - before if window else float("nan")
    return bump, 100 * bump / before


def mean_spread(values: list[float]) -> str:
    if any(v is None for v in values):
        reached = [v for v in values if v is not None]
        return f"not reached by {len(values) - len(reached)}/{len(values)} seeds" + (
            f" (others {statistics.mean(reached):.3g})" if reached else ""
        )
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {(max(values) - min(values)) / 2:.2g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--seeds", help="comma-separated seeds (default: the size's)")
    ap.add_argument("--schedules", help="comma-separated lr_schedule kinds; the first is the recommended one")
    ap.add_argument("--fractions", help="comma-separated shares of the FLOPs spent before growing; first recommended")
    ap.add_argument("--ramp-steps", type=int, help="growth mask ramp (default: the size's)")
    ap.add_argument("--scratch-steps", type=int, help="length of the scratch run (sets the FLOPs budget)")
    ap.add_argument("--out", help="output directory (default runs/bench-growth-<size>)")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep --out and skip runs already complete there (several invocations build one report)",
    )
    args = ap.parse_args()
    size = SIZES[args.size]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else size.seeds
    schedules = args.schedules.split(",") if args.schedules else size.schedules
    fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else size.fractions
    ramp = args.ramp_steps or size.ramp_steps
    if args.scratch_steps:
        size.scratch_steps = args.scratch_steps
    out = Path(args.out or REPO / "runs" / f"bench-growth-{args.size}")
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token

    tps = size.tokens_per_step
    scratch_flops = size.scratch_steps * tps * flops_per_token(from_dict(ModelConfig, size.large))
    started = time.perf_counter()
    wall: dict[str, float] = {}

    def complete(name: str, stages: list) -> bool:
        record = out / name / "stages.jsonl"
        return args.keep and record.is_file() and len(record.read_text().splitlines()) == len(stages)

    for seed in seeds:
        name = f"scratch-s{seed}"
        stages, _ = stages_for(size, None, scratch_flops, ramp, None)
        if not complete(name, stages):
            wall[name] = train_or_continue(run_config(size, name, out, stages, "per_stage", seed), out / name)
    combos = [(sch, frac, seeds[0]) for sch in schedules for frac in fractions]
    combos += [(schedules[0], fractions[0], seed) for seed in seeds[1:]]
    small_steps = {}
    for schedule, fraction, seed in combos:
        name = f"grown-{schedule}-f{fraction:g}-s{seed}"
        stages, small_steps[fraction] = stages_for(size, fraction, scratch_flops, ramp, None)
        if not complete(name, stages):
            wall[name] = train_or_continue(run_config(size, name, out, stages, schedule, seed), out / name)

    rows = []
    for schedule in schedules:
        for fraction in fractions:
            results = []
            for seed in seeds:
                name = f"grown-{schedule}-f{fraction:g}-s{seed}"
                if not (out / name).exists():
                    continue
                _, s_curve = run_curves(size, out / f"scratch-s{seed}", grown=False)
                g_small, g_large = run_curves(size, out / name, grown=True)
                target = s_curve[-1].loss
                f_reach = crossing(g_large, target, "flops")
                w_reach = crossing(g_large, target, "wall")
                results.append(
                    {
                        "seed": seed,
                        "scratch_final": target,
                        "grown_final": g_large[-1].loss,
                        "flops_share": None if f_reach is None else f_reach / scratch_flops,
                        "wall_share": None if w_reach is None else w_reach / s_curve[-1].wall,
                        "bump_pct": bump_of(g_small, g_large, ramp)[1],
                        "pre_growth_loss": g_small[-1].loss,
                    }
                )
            if results:
                rows.append({"schedule": schedule, "fraction": fraction, "results": results})

    (out / "results.json").write_text(json.dumps({"size": args.size, "rows": rows, "wall_s": wall}, indent=2))
    print(
        f"size {args.size}: small {size.small} -> final {size.large}; {tps} tokens/step; "
        f"scratch {size.scratch_steps} steps = {scratch_flops:.3g} FLOPs; ramp {ramp}; seeds {seeds}"
    )
    header = (
        "| schedule | growth at | seeds | FLOPs to reach L* (share of scratch) | speedup | wall-clock share "
        "| grown final | scratch final L* | post-growth bump |"
    )
    print(header)
    print("|" + "---|" * 9)
    for row in rows:
        res = row["results"]
        shares = [r["flops_share"] for r in res]
        speed = [None if s is None else 1 / s for s in shares]
        print(
            f"| {row['schedule']} | {row['fraction']:.0%} ({small_steps[row['fraction']]} small steps) | {len(res)} "
            f"| {mean_spread(shares)} | {mean_spread(speed)}x | {mean_spread([r['wall_share'] for r in res])} "
            f"| {mean_spread([r['grown_final'] for r in res])} | {mean_spread([r['scratch_final'] for r in res])} "
            f"| {mean_spread([r['bump_pct'] for r in res])}% |"
        )
    print(
        f"total wall-clock {time.perf_counter() - started:.0f} s; per run: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())
    )
    plot(size, out, seeds[0], schedules, fractions)
    print(f"plot: {out / 'growth_vs_scratch.png'}; numbers: {out / 'results.json'}")
    return 0


def plot(size: Size, out: Path, seed: int, schedules: list[str], fractions: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    _, s_curve = run_curves(size, out / f"scratch-s{seed}", grown=False)
    ax.plot([p.flops for p in s_curve], [p.loss for p in s_curve], "k-", lw=1.5, label="from scratch")
    for schedule in schedules:
        for fraction in fractions:
            run = out / f"grown-{schedule}-f{fraction:g}-s{seed}"
            if run.exists():
                small, large = run_curves(size, run, grown=True)
                pts = small + large
                ax.plot(
                    [p.flops for p in pts], [p.loss for p in pts], "-", lw=1, label=f"grown {schedule} @{fraction:.0%}"
                )
    ax.axhline(s_curve[-1].loss, color="gray", ls=":", lw=0.8)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss")
    ax.set_ylim(top=s_curve[0].loss if len(s_curve) > 2 else None)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "growth_vs_scratch.png", dpi=120)


if __name__ == "__main__":
    sys.exit(main())
