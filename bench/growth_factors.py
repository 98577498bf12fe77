"""Why a grown model learns slower than a fresh one: one small stage, then the final shape trained
to the end of the budget with one factor of the recipe changed at a time, beside the two baselines
a user tries first (the final shape from scratch, the small shape alone), all at equal FLOPs.

    python bench/growth_factors.py [--size mid] [--variants base,zero,...] [--fraction 0.35]
        [--jobs 2] [--out runs/bench-growth-factors] [--corpus pinned] [--keep]

Setup: ``growth_vs_scratch.py``'s size (default ``mid``: 2 x 64 -> 4 x 128 Llama-style at 3e13 FLOPs),
its pinned corpus, seed 1234, growth after ``--fraction`` of the FLOPs under ``lr_schedule: global``. The small stage
is trained once (``flops`` trains its own); every other variant grows its final checkpoint (a copy of the run directory, ``flm
train --resume``) and trains the final shape for the rest of the budget.

Variants (the growth section's options, and the grown stage's LR):
- ``base``: the defaults -- MSG on every dimension, depth interleaved by copy, the size's ramp (mid: 200);
- ``zero``: zero-initialised output projections of new structure instead of masks (no ramp) -- the
  share of the ramp (MSG's new weights count only once their mask has risen);
- ``clone``: widths by HyperCloning (``clone``, noise 0.01 to break the copies' symmetry, inexact)
  and new layers zero-initialised -- full-sized copies of trained features instead of small random
  new weights;
- ``lr_flops``: as base, but the grown stage starts at the LR a from-scratch run of the final shape
  has at the same share of the FLOPs (``stages[1].start_lr``) instead of where the small stage's
  tokens left the run-level schedule -- the share of the LR;
- ``zero_lr_flops``: zero and lr_flops;
- ``flops``: as base, with the run-level schedule over FLOPs (``lr_schedule.progress: flops``): the
  small stage decays only by its share of the compute and the grown stage continues from there (it
  trains its own small stage).

Reports per run: final validation loss; its margin to the scratch target and to the small-only
model; FLOPs to reach the scratch final loss L* (share of the budget); the post-growth bump
(``growth_vs_scratch.bump_of``); and the **learning rate over the same losses**: the FLOPs the
scratch run spends going from the pre-growth loss down to L*, divided by the FLOPs the grown run
spends on the same descent after growing (1.0: the grown model learns as fast as a fresh one over
that stretch; below 1: slower).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from growth_vs_scratch import (  # noqa: E402
    REPO,
    SIZES,
    Job,
    Size,
    baseline_final,
    baseline_stages,
    bump_of,
    completed_stages,
    copy_small_stage,
    corpus_id,
    crossing,
    curve,
    prepare_out,
    run_config,
    run_curves,
    run_jobs,
    stages_for,
    step_seconds,
)

#: name -> (growth overrides, the grown stage's LR, what it changes); LR: "tokens" (the run-level
#: schedule over tokens: the defaults), "start_lr" (tokens, but the grown stage starts at the scratch
#: LR of its FLOPs share), "flops" (``lr_schedule.progress: flops``)
VARIANTS: dict[str, tuple[dict, str, str]] = {
    "base": ({}, "tokens", "the defaults: MSG, interleaved depth copies, the size's ramp, schedule over tokens"),
    "zero": ({"default_operator": "zero", "ramp": {"steps": 0}}, "tokens", "zero-init new structure, no masks"),
    "clone": (
        {
            "default_operator": "clone",
            "operators": {"depth": "zero"},
            "clone_noise": 0.01,
            "exact": False,
            "ramp": {"steps": 0},
        },
        "tokens",
        "HyperCloning widths (noise 0.01), zero-init new layers",
    ),
    "lr_flops": ({}, "start_lr", "base, grown stage starts at the scratch LR of its FLOPs share"),
    "zero_lr_flops": ({"default_operator": "zero", "ramp": {"steps": 0}}, "start_lr", "zero and lr_flops"),
    "flops": ({}, "flops", "base, the run-level schedule over FLOPs (lr_schedule.progress: flops)"),
}
SEED = 1234


def flops_share_lr(size: Size, fraction: float) -> float:
    """The LR a from-scratch run of the final shape has after ``fraction`` of its steps (the
    trainer's schedule function, ``training.config.lr.lr_at``)."""
    from training.config.lr import lr_at

    steps = size.scratch_steps
    return lr_at(
        max(1, round(fraction * steps)),
        peak=size.train["lr"],
        min_lr=size.train["min_lr"],
        warmup=size.warmup_steps,
        decay=steps,
        style="cosine",
    )


def descent_speed(scratch: list, grown: list, pre_loss: float, target: float, grown_at: float) -> float | None:
    """Scratch FLOPs from ``pre_loss`` down to ``target`` / grown FLOPs for the same descent after
    growing at ``grown_at`` FLOPs (None when either never gets there)."""
    s_from, s_to = crossing(scratch, pre_loss, "flops"), crossing(scratch, target, "flops")
    g_to = crossing(grown, target, "flops")
    if None in (s_from, s_to, g_to) or g_to <= grown_at:
        return None
    return (s_to - s_from) / (g_to - grown_at)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="mid")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--fraction", type=float, default=0.35, help="share of the FLOPs spent before growing")
    ap.add_argument("--scratch-steps", type=int, help="length of the scratch run (sets the FLOPs budget)")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (default 2: one per core)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-growth-factors"))
    ap.add_argument("--corpus", choices=["pinned", "large", "small"], default="pinned")
    ap.add_argument("--keep", action="store_true", help="keep --out and skip runs already complete there")
    args = ap.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if not 0 < args.fraction < 1:
        ap.error("--fraction must be in (0, 1)")
    size = SIZES[args.size]
    if args.scratch_steps:
        size.scratch_steps = args.scratch_steps
    out = Path(args.out)
    corpus = prepare_out(size, out, args.corpus, args.keep)

    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token

    tps = size.tokens_per_step
    f_step = {s: flops_per_token(from_dict(ModelConfig, getattr(size, s))) * tps for s in ("small", "large")}
    budget = size.scratch_steps * f_step["large"]
    start_lr = flops_share_lr(size, args.fraction)

    def cost(stages: list[dict]) -> list[float]:
        return [st["tokens"] // tps * step_seconds(f_step[st["name"]]) for st in stages]

    jobs, configs = [], {}
    for name, shape in (("scratch", "large"), ("small", "small")):
        stages = baseline_stages(size, shape, budget)
        configs[name] = run_config(size, name, out, stages, "per_stage", SEED)
        if completed_stages(out / name) < 1:
            jobs.append(Job(name, configs[name], prepare=lambda d=out / name: _fresh(d), cost=sum(cost(stages))))
    grown_stages = {}
    for name in names:
        growth, lr, _ = VARIANTS[name]
        stages, _ = stages_for(size, args.fraction, budget, size.ramp_steps, growth)
        if lr == "start_lr":
            stages[1]["start_lr"] = start_lr
        grown_stages[name] = stages
        configs[name] = run_config(size, name, out, stages, "global", SEED)
        if lr == "flops":
            _set_progress(configs[name], "flops")
    # the small stage under the token schedule: trained once, copied (every such variant's is the same);
    # a variant with the schedule over FLOPs trains its own (its small stage's LR differs)
    head = out / "small-stage"
    shared = [n for n in names if VARIANTS[n][1] != "flops"]
    if shared:
        configs["small-stage"] = run_config(size, "small-stage", out, grown_stages[shared[0]], "global", SEED)
        if completed_stages(head) < 1:
            small_cost = cost(grown_stages[shared[0]])[0]
            jobs.append(Job("small-stage", configs["small-stage"], prepare=lambda: _stage0(head), cost=small_cost))
    for name in names:
        if completed_stages(out / name) == 2:
            continue
        if name not in shared:
            own = sum(cost(grown_stages[name]))
            jobs.append(Job(name, configs[name], prepare=lambda d=out / name: _fresh(d), cost=own))
            continue

        def prepare(dst=out / name) -> tuple[str, ...]:
            copy_small_stage(head, dst)
            return ("--resume",)

        after = ("small-stage",) if any(j.name == "small-stage" for j in jobs) else ()
        jobs.append(Job(name, configs[name], after, prepare, cost(grown_stages[name])[1]))
    started = time.perf_counter()
    wall = run_jobs(jobs, args.jobs, 1)

    scratch = curve(out / "scratch" / "stage0-large", f_step["large"] / tps, tps, 0.0, 0.0, 0)
    target = scratch[-1].loss
    small_final = baseline_final(size, out / "small", "small")[0]
    rows = []
    for name in names:
        g_small, g_large = run_curves(size, out / name, grown=True)
        grown_at = g_small[-1].flops
        reach = crossing(g_large, target, "flops")
        record = json.loads((out / name / "stage1-large" / "growth.json").read_text())
        rows.append(
            {
                "variant": name,
                "changes": VARIANTS[name][2],
                "exact": record.get("exact"),
                "final": g_large[-1].loss,
                "vs_scratch": g_large[-1].loss - target,
                "vs_small_only": g_large[-1].loss - small_final,
                "flops_share": None if reach is None else reach / budget,
                "bump_pct": bump_of(g_small, g_large, VARIANTS[name][0].get("ramp", {}).get("steps", size.ramp_steps))[
                    1
                ],
                "descent_speed": descent_speed(scratch, g_large, g_small[-1].loss, target, grown_at),
                "pre_growth_loss": g_small[-1].loss,
            }
        )
    (out / "factors.json").write_text(
        json.dumps(
            {
                "size": args.size,
                "corpus": corpus,
                "fraction": args.fraction,
                "budget_flops": budget,
                "flops_share_start_lr": start_lr,
                "scratch_final": target,
                "small_only_final": small_final,
                "rows": rows,
                "wall_s": wall,
            },
            indent=2,
        )
    )
    print(
        f"\nsize {args.size}: {size.small} -> {size.large}; budget {budget:.3g} FLOPs; growth at {args.fraction:.0%}; "
        f"scratch final L* {target:.4f}; small shape alone {small_final:.4f}; lr_flops start LR {start_lr:.3g}"
    )
    print(
        "| variant | what changes | final | - scratch | - small-only | FLOPs to L* (share) "
        "| descent speed vs scratch | bump |"
    )
    print("|" + "---|" * 8)
    for r in rows:
        share = "not reached" if r["flops_share"] is None else f"{r['flops_share']:.3f}"
        speed = "n/a" if r["descent_speed"] is None else f"{r['descent_speed']:.2f}"
        print(
            f"| {r['variant']} | {r['changes']} | {r['final']:.4f} | {r['vs_scratch']:+.4f} | {r['vs_small_only']:+.4f} "
            f"| {share} | {speed} | {r['bump_pct']:+.2f}% |"
        )
    print(corpus_id.describe(corpus))
    print(f"total wall-clock {time.perf_counter() - started:.0f} s")
    return 0 if all(math.isfinite(r["final"]) for r in rows) else 1


def _set_progress(config: Path, progress: str) -> None:
    """Set ``lr_schedule.progress`` in a run YAML written by ``run_config``."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    cfg["lr_schedule"]["progress"] = progress
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _fresh(run_dir: Path) -> tuple[str, ...]:
    shutil.rmtree(run_dir, ignore_errors=True)
    return ()


def _stage0(run_dir: Path) -> tuple[str, ...]:
    shutil.rmtree(run_dir, ignore_errors=True)
    return ("--stage", "0")


if __name__ == "__main__":
    sys.exit(main())
