"""Growth vs scratch: the same final shape on the same data and FLOPs budget, (a) trained from scratch
and (b) grown from a small model, side by side, over seeds, LR schedules and growth points.

    python bench/growth_vs_scratch.py                      # --size small: the toy budget (4.3e12 FLOPs)
    python bench/growth_vs_scratch.py --size large         # 10x: Llama-style, 2 seeds
        [--seeds 1,2] [--schedules global,equivalent_step,per_stage] [--fractions 0.35,0.25]
        [--ramp-steps N] [--budgets 0.5] [--jobs 2] [--full-grid] [--keep] [--out DIR] [--corpus pinned]

Sizes:
- small: 2 x 64 -> 4 x 128 (LayerNorm, GELU, tied), 2048 tokens/step, 4.3e12 FLOPs per run.
- mid: 2 x 64 -> 4 x 128 (Llama-style as large), 4096 tokens/step, 3e13 FLOPs per run (the most the
  pinned corpus gives the small shape alone without repeating a token), recommended schedule
  ``global_flops`` (``lr_schedule: {kind: global, progress: flops}``).
- large: 2 x 96 -> 4 x 192 (RMSNorm, SwiGLU, RoPE, untied, no bias), 4096 tokens/step, 4.35e13
  FLOPs per run (10x), validation on 16k tokens every 50 steps.

Corpus (``--corpus``, default ``pinned``): ``data.default_corpus: pinned``, the text of the package
archives pinned in ``constraints/bench-corpus.txt`` (fetched by pip into ``data.sources_dir`` when
absent; docs/data.md), the same on every machine: no run repeats a token. The bench builds it (and
its tokenizer and shards) before the runs, prints its fingerprint, writes it to ``<out>/corpus.json``
and ``results.json``, and refuses to add runs to an ``--out`` (``--keep``) whose runs used another
corpus (``bench/corpus_id.py``). ``--corpus large`` / ``small`` are the installation-dependent
selections of earlier results.

Runs: from scratch once per seed; grown with the recommended (first) schedule and growth point at
every seed, and with the first seed each other schedule at the first growth point and each other
growth point under the first schedule (``--full-grid``: every schedule x growth point). Every grown
run spends the scratch run's FLOPs: ``fraction`` of them in the small stage, the rest in the final
shape. ``global`` and ``equivalent_step`` runs of one growth point and seed train the same small
stage, so it is trained once and copied. ``--jobs`` runs train at the same time (default 2: on the
2-core machine, one per core with one torch thread each).

Baselines a user tries first: besides the scratch target, the small shape trained alone for the
whole budget (``small-s<seed>``, every seed), and both shapes alone at the cheaper budgets of
``--budgets`` (multiples of the headline's, first seed). The first table gives, per budget, both
final losses and tokens per parameter, and the crossover: the budget from which the scratch target
beats the small-only model (interpolated in log FLOPs). Growing is worth it only where it beats
both.

Reports per grown configuration (mean and spread over its seeds, each seed against the scratch run
of the same seed):
- FLOPs to reach the scratch final validation loss L*: the FLOPs (small stage included) at the
  first validation point *of the final-shape stage* at or below L* (linear interpolation; the small
  stage's crossings do not count); as a fraction of the scratch FLOPs and as a speedup;
- the same in wall-clock (each run's summed step times, evaluation excluded);
- the final validation loss of the grown run, the scratch run and the small-only run at equal FLOPs,
  and the grown run's margin to the better baseline (negative: growing won);
- the post-growth bump: highest validation loss in the ramp + 50 steps after the transition minus
  the last validation loss before it, in % of the latter.
FLOPs per token: ``training.model_size.flops_per_token`` (6 x matmul params + attention).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import corpus_id  # noqa: E402


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
    #: budgets (multiples of the headline's) at which both shapes also train alone, with the first
    #: seed, to locate where the scratch target starts to beat the small-only model
    budgets: list[float] = field(default_factory=lambda: [0.5, 1.0])

    @property
    def tokens_per_step(self) -> int:
        return self.train["global_batch_size"] * self.large["seq_length"]


#: the Llama-style block of the mid and large sizes
_LLAMA = {
    "vocab_size": 2048,
    "seq_length": 128,
    "normalization": "RMSNorm",
    "activation": "swiglu",
    "position_embedding": "rope",
    "tie_embeddings": False,
    "bias": False,
}

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
        data={"kind": "default", "default_corpus": "pinned", "seed": 1234},
        scratch_steps=300,
        seeds=[1234],
        fractions=[0.6],
        schedules=["global"],
        ramp_steps=20,
        warmup_steps=20,
    ),
    # a budget where the small shape alone is still the better baseline (docs/benchmarks.md, "Growth
    # against every baseline"): 3e13 FLOPs, the most the pinned corpus gives the small shape alone
    # without repeating a token (3.4e13)
    "mid": Size(
        small={
            "num_layers": 2,
            "hidden_size": 64,
            "ffn_hidden_size": 192,
            "num_attention_heads": 2,
            **_LLAMA,
        },
        large={
            "num_layers": 4,
            "hidden_size": 128,
            "ffn_hidden_size": 384,
            "num_attention_heads": 4,
            **_LLAMA,
        },
        train={
            "global_batch_size": 32,
            "micro_batch_size": 32,
            "lr": 3.0e-3,
            "min_lr": 3.0e-4,
            "eval_interval": 50,
            "eval_batches": 8,
        },
        data={"kind": "default", "default_corpus": "pinned", "seed": 1234},
        scratch_steps=980,
        seeds=[1234, 5678],
        fractions=[0.35],
        schedules=["global_flops", "global"],
        ramp_steps=200,
        warmup_steps=100,
        budgets=[0.5, 1.0],
    ),
    "large": Size(
        small={
            "num_layers": 2,
            "hidden_size": 96,
            "ffn_hidden_size": 256,
            "num_attention_heads": 3,
            **_LLAMA,
        },
        large={
            "num_layers": 4,
            "hidden_size": 192,
            "ffn_hidden_size": 512,
            "num_attention_heads": 6,
            **_LLAMA,
        },
        train={
            "global_batch_size": 32,
            "micro_batch_size": 32,
            "lr": 3.0e-3,
            "min_lr": 3.0e-4,
            "eval_interval": 50,
            "eval_batches": 4,
        },
        data={"kind": "default", "default_corpus": "pinned", "seed": 1234},
        scratch_steps=750,
        seeds=[1234, 5678],
        fractions=[0.35, 0.25],
        schedules=["global", "equivalent_step", "per_stage"],
        ramp_steps=200,
        warmup_steps=100,
    ),
}


#: the bench's schedule names: lr_schedule kinds, and ``global_flops`` (kind global, progress flops)
SCHEDULES = ("global_flops", "global", "equivalent_step", "per_stage")


def lr_schedule_section(size: Size, schedule: str) -> dict:
    """The ``lr_schedule:`` section of a run under the bench's ``schedule`` name."""
    if schedule == "per_stage":  # each stage warms up by its own train section (a run-level warmup is refused)
        return {"kind": schedule}
    section = {"kind": schedule, "warmup_tokens": size.warmup_steps * size.tokens_per_step}
    if schedule == "global_flops":
        section.update(kind="global", progress="flops")
    return section


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
        # per_stage: each stage warms up by its own train section (a run-level warmup would be refused)
        "lr_schedule": lr_schedule_section(size, schedule),
        "stages": stages,
    }
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def growth_section(size: Size, ramp_steps: int, overrides: dict | None = None) -> dict:
    section = {"default_operator": "msg", "depth": {"placement": "interleave"}, "ramp": {"steps": ramp_steps}}
    section.update(size.growth)
    section.update(overrides or {})
    return section


def prepare_out(size: Size, out: Path, corpus: str, keep: bool) -> dict:
    """Make ``out`` (emptied unless ``keep``), build the size's corpus ``corpus`` (``data.default_corpus``),
    print its fingerprint and claim ``out`` for it (``corpus_id.claim``: refuses runs of another
    corpus); returns the corpus record."""
    if out.exists() and not keep:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    size.data = dict(size.data, default_corpus=corpus)
    record = corpus_id.prepare(size.data, size.large["vocab_size"])
    print(corpus_id.describe(record), flush=True)
    corpus_id.claim(out, record)
    return record


def baseline_stages(size: Size, shape: str, flops: float) -> list[dict]:
    """The single stage of a baseline run: ``shape`` (small or large) trained alone for ``flops``."""
    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token

    model = getattr(size, shape)
    steps = max(1, round(flops / (flops_per_token(from_dict(ModelConfig, model)) * size.tokens_per_step)))
    return [{"name": shape, "model": model, "tokens": steps * size.tokens_per_step}]


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


def baseline_runs(seeds: list[int], budgets: list[float]) -> list[tuple[str, str, float, int]]:
    """(run name, shape, budget as a multiple of the headline's, seed) of every single-shape baseline
    besides the scratch runs: ``small-s<seed>`` (the small shape for the headline budget) at every
    seed, and ``large-b<scale>`` / ``small-b<scale>`` at each cheaper budget with the first seed."""
    runs = [(f"small-s{seed}", "small", 1.0, seed) for seed in seeds]
    for scale in budgets:
        if scale != 1.0:
            runs += [(f"{shape}-b{scale:g}-s{seeds[0]}", shape, scale, seeds[0]) for shape in ("large", "small")]
    return runs


def baseline_final(size: Size, run_dir: Path, shape: str) -> tuple[float, float, float]:
    """(final validation loss, FLOPs, tokens per parameter) of a single-shape run of ``shape``."""
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token, total_params

    model = from_dict(ModelConfig, getattr(size, shape))
    points = curve(run_dir / f"stage0-{shape}", flops_per_token(model), size.tokens_per_step, 0.0, 0.0, 0)
    last = points[-1]
    tokens = last.step * size.tokens_per_step
    return last.loss, last.flops, tokens / total_params(model)


def crossover(pairs: list[tuple[float, float, float]]) -> str:
    """Where the scratch target starts to beat the small-only model, from (FLOPs, scratch final,
    small-only final) at several budgets: the budget where their difference changes sign,
    interpolated linearly in log FLOPs."""
    pairs = sorted(pairs)
    for (f0, a0, b0), (f1, a1, b1) in zip(pairs, pairs[1:]):
        d0, d1 = a0 - b0, a1 - b1
        if d0 > 0 >= d1:
            x = math.log(f0) + (math.log(f1) - math.log(f0)) * d0 / (d0 - d1)
            return f"the scratch target starts to beat the small-only model at ~{math.exp(x):.3g} FLOPs"
    if all(a < b for _, a, b in pairs):
        return f"the scratch target beats the small-only model at every budget measured (from {pairs[0][0]:.3g})"
    return f"the small-only model beats the scratch target at every budget measured (up to {pairs[-1][0]:.3g})"


@dataclass
class Job:
    """One ``flm train`` invocation of the bench: ``name`` trains ``config`` once the jobs named in
    ``after`` have finished."""

    name: str
    config: Path
    after: tuple[str, ...] = ()
    #: prepares the output directory when the job starts; returns the extra ``flm train`` flags
    prepare: Callable[[], tuple[str, ...]] = tuple
    #: estimated seconds (``step_seconds``), for the order
    cost: float = 0.0


def step_seconds(flops_per_step: float) -> float:
    """A training step's seconds on one core of the 2-core machine (fp32, one torch thread): a
    fixed part plus FLOPs at ~53 GFLOP/s, fitted to the large size's two shapes (0.36 s and 1.3 s)."""
    return 0.115 + flops_per_step / 5.3e10


def makespan(jobs: list[Job], parallel: int, order: list[str]) -> float:
    """Estimated end of the list schedule: whenever a worker is free it starts the first job of
    ``order`` whose ``after`` jobs have ended (by the jobs' ``cost``)."""
    end: dict[str, float] = {}
    free = [0.0] * parallel
    todo = list(order)
    by_name = {j.name: j for j in jobs}
    while todo:
        t = min(free)
        ready = [n for n in todo if all(end.get(a, float("inf")) <= t for a in by_name[n].after)]
        if not ready:  # wait for the next end after t
            free[free.index(t)] = min(e for e in end.values() if e > t)
            continue
        name = ready[0]
        todo.remove(name)
        end[name] = t + by_name[name].cost
        free[free.index(t)] = end[name]
    return max(end.values(), default=0.0)


def job_order(jobs: list[Job], parallel: int) -> list[str]:
    """A start order for ``jobs`` that keeps the estimated end early: built one job at a time, each
    the candidate whose rollout (the rest in order of their longest chain of work) ends first."""
    chain: dict[str, float] = {}
    for job in reversed(jobs):  # jobs are listed after the ones they wait on
        chain[job.name] = job.cost + max((chain[j.name] for j in jobs if job.name in j.after), default=0.0)
    rest = sorted(chain, key=chain.get, reverse=True)
    order: list[str] = []
    while rest:
        best = min(rest, key=lambda n: makespan(jobs, parallel, order + [n] + [m for m in rest if m != n]))
        order.append(best)
        rest.remove(best)
    return order


def run_jobs(jobs: list[Job], parallel: int, threads: int) -> dict[str, float]:
    """Run ``jobs`` respecting their ``after`` order, at most ``parallel`` at a time, each with
    ``threads`` torch threads; returns each job's wall-clock seconds. A failed job stops the bench.
    Jobs start in ``job_order`` (estimated by their ``cost``), so that the runs end close together."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=str(threads))
    order = job_order(jobs, parallel)
    print(f"estimated {makespan(jobs, parallel, order) / 60:.0f} min for {len(jobs)} jobs", flush=True)
    pending, running, done, wall = list(jobs), {}, set(), {}
    while pending or running:
        ready = sorted((j for j in pending if all(a in done for a in j.after)), key=lambda j: order.index(j.name))
        while ready and len(running) < parallel:
            job = ready.pop(0)
            pending.remove(job)
            cmd = [sys.executable, "-m", "training.cli", "train", str(job.config), *job.prepare()]
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
            running[job.name] = (proc, time.perf_counter())
            print(f"[{time.strftime('%H:%M:%S')}] start {job.name}", flush=True)
        time.sleep(1.0)
        for name, (proc, start) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode != 0:
                for other, _ in running.values():
                    other.kill()
                raise SystemExit(f"bench: {name} failed (exit {proc.returncode}); its log is under its output_dir")
            wall[name] = time.perf_counter() - start
            done.add(name)
            print(f"[{time.strftime('%H:%M:%S')}] done  {name} ({wall[name]:.0f} s)", flush=True)
    return wall


def completed_stages(run_dir: Path) -> int:
    record = run_dir / "stages.jsonl"
    return len(record.read_text().splitlines()) if record.is_file() else 0


def continue_from_disk(run_dir: Path, keep_stages: int = -1) -> tuple[str, ...]:
    """Prepare ``run_dir`` to continue after the stages it completed (``stages.jsonl``; at most
    ``keep_stages`` of them when >= 0): later stage directories are removed, so a stage whose
    settings changed is redone. Returns the ``flm train`` flags (``--resume`` if anything is kept)."""
    done = completed_stages(run_dir)
    if keep_stages >= 0:
        done = min(done, keep_stages)
    if done == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        return ()
    lines = (run_dir / "stages.jsonl").read_text().splitlines()[:done]
    (run_dir / "stages.jsonl").write_text("".join(line + "\n" for line in lines))
    for stage_dir in run_dir.glob("stage*-*"):
        if int(stage_dir.name[len("stage") :].split("-")[0]) >= done:
            shutil.rmtree(stage_dir)
    return ("--resume",)


def copy_small_stage(src: Path, dst: Path) -> None:
    """Start run ``dst`` from run ``src``'s completed small stage (stage 0: its directory, final
    checkpoint included, and its ``stages.jsonl`` record): both runs train stage 0 identically
    (``global`` and ``equivalent_step`` differ only from the grown stage on)."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copytree(src / "stage0-small", dst / "stage0-small", symlinks=True)
    first = (src / "stages.jsonl").read_text().splitlines()[0]
    (dst / "stages.jsonl").write_text(first + "\n")


def grown_combos(schedules: list[str], fractions: list[float], seeds: list[int], full_grid: bool):
    """(schedule, fraction, seed) of the grown runs: the recommended (first) schedule and fraction
    with every seed; the other schedules at the first fraction and the other fractions with the
    first schedule (``full_grid``: every schedule x fraction), with the first seed."""
    combos = [(schedules[0], fractions[0], seed) for seed in seeds]
    if full_grid:
        combos += [(s, f, seeds[0]) for s in schedules for f in fractions if (s, f) != (schedules[0], fractions[0])]
    else:
        combos += [(s, fractions[0], seeds[0]) for s in schedules[1:]]
        combos += [(schedules[0], f, seeds[0]) for f in fractions[1:]]
    return combos


def plan_jobs(out: Path, runs: dict, stage_costs: dict[str, list[float]], configs: dict[str, Path]) -> list[Job]:
    """The jobs that complete every run in ``runs`` (name -> (fraction, schedule, seed)) under ``out``
    (``stage_costs``: each run's estimated seconds per stage).

    Runs that train the same small stage -- same fraction and seed, schedule ``global`` or
    ``equivalent_step`` -- share it: the first trains stage 0 alone (``--stage 0``), then each
    continues from it (the others from a copy). Runs already complete are skipped, partial ones
    resume after their completed stages. Each job lists after the jobs it waits on."""
    groups: dict[tuple, list[str]] = {}
    for name, (fraction, schedule, seed) in runs.items():
        if fraction is not None and schedule in ("global", "equivalent_step"):
            groups.setdefault((fraction, seed), []).append(name)
    leader = {name: names[0] for names in groups.values() if len(names) > 1 for name in names}
    first, full, after = [], [], []
    for name in runs:
        run_dir = out / name
        costs, done = stage_costs[name], completed_stages(run_dir)
        if done == len(costs):
            continue
        head = leader.get(name)
        if head is None or done >= 1:
            full.append(
                Job(name, configs[name], prepare=lambda d=run_dir: continue_from_disk(d), cost=sum(costs[done:]))
            )
            continue
        if head == name:

            def small_only(d=run_dir) -> tuple[str, ...]:
                continue_from_disk(d, 0)
                return ("--stage", "0")

            first.append(Job(f"{name}:stage0", configs[name], prepare=small_only, cost=costs[0]))
            after.append(
                Job(name, configs[name], (f"{name}:stage0",), lambda d=run_dir: continue_from_disk(d), sum(costs[1:]))
            )
        else:
            head_dir = out / head
            wait = () if completed_stages(head_dir) >= 1 else (f"{head}:stage0",)

            def prepare(src=head_dir, dst=run_dir) -> tuple[str, ...]:
                copy_small_stage(src, dst)
                return ("--resume",)

            after.append(Job(name, configs[name], wait, prepare, sum(costs[1:])))
    return first + full + after


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
    ap.add_argument(
        "--schedules",
        help="comma-separated, from " + ", ".join(SCHEDULES) + " (lr_schedule kinds; global_flops: kind global, "
        "progress flops); the first is the recommended one",
    )
    ap.add_argument("--fractions", help="comma-separated shares of the FLOPs spent before growing; first recommended")
    ap.add_argument("--ramp-steps", type=int, help="growth mask ramp (default: the size's)")
    ap.add_argument("--scratch-steps", type=int, help="length of the scratch run (sets the FLOPs budget)")
    ap.add_argument(
        "--budgets",
        help="comma-separated budgets, as multiples of the headline's, at which scratch and small-only also "
        "run (first seed) to locate their crossover (default: the size's; 1 is always included)",
    )
    ap.add_argument("--out", help="output directory (default runs/bench-growth-<size>)")
    ap.add_argument(
        "--corpus",
        choices=["pinned", "large", "small"],
        default="pinned",
        help="data.default_corpus of every run (default pinned: the same corpus on every machine)",
    )
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep --out and skip runs already complete there (several invocations build one report)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (default 2: one per core)")
    ap.add_argument("--threads", type=int, help="torch threads per run (default: the cores / --jobs)")
    ap.add_argument(
        "--full-grid",
        action="store_true",
        help="every schedule x every fraction with the first seed (default: each one varied around the first)",
    )
    args = ap.parse_args()
    size = SIZES[args.size]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else size.seeds
    schedules = args.schedules.split(",") if args.schedules else size.schedules
    if unknown := [x for x in schedules if x not in SCHEDULES]:
        ap.error(f"unknown schedules {unknown}; choose from {', '.join(SCHEDULES)}")
    fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else size.fractions
    ramp = args.ramp_steps or size.ramp_steps
    budgets = sorted({1.0, *([float(b) for b in args.budgets.split(",")] if args.budgets else size.budgets)})
    if any(b <= 0 for b in budgets):
        ap.error("--budgets must be positive multiples of the headline budget")
    if args.scratch_steps:
        size.scratch_steps = args.scratch_steps
    out = Path(args.out or REPO / "runs" / f"bench-growth-{args.size}")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    corpus = prepare_out(size, out, args.corpus, args.keep)

    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from training.config import ModelConfig
    from training.config_base import from_dict
    from training.model_size import flops_per_token

    tps = size.tokens_per_step
    scratch_flops = size.scratch_steps * tps * flops_per_token(from_dict(ModelConfig, size.large))
    started = time.perf_counter()
    stage_lists = {None: stages_for(size, None, scratch_flops, ramp, None)}
    for fraction in fractions:
        stage_lists[fraction] = stages_for(size, fraction, scratch_flops, ramp, None)
    small_steps = {f: stage_lists[f][1] for f in fractions}
    runs = {f"scratch-s{seed}": (None, "per_stage", seed) for seed in seeds}
    stages_of = {name: stage_lists[None][0] for name in runs}
    for schedule, fraction, seed in grown_combos(schedules, fractions, seeds, args.full_grid):
        runs[f"grown-{schedule}-f{fraction:g}-s{seed}"] = (fraction, schedule, seed)
        stages_of[f"grown-{schedule}-f{fraction:g}-s{seed}"] = stage_lists[fraction][0]
    # the baselines a user tries first: the small shape for the whole budget (every seed), and both
    # shapes alone at cheaper budgets (first seed) to locate the crossover
    for name, shape, scale, seed in baseline_runs(seeds, budgets):
        runs[name] = (None, "per_stage", seed)
        stages_of[name] = baseline_stages(size, shape, scale * scratch_flops)
    configs = {
        name: run_config(size, name, out, stages_of[name], schedule, seed)
        for name, (fraction, schedule, seed) in runs.items()
    }
    flops = {shape: flops_per_token(from_dict(ModelConfig, getattr(size, shape))) * tps for shape in ("small", "large")}
    costs = {name: [st["tokens"] // tps * step_seconds(flops[st["name"]]) for st in stages_of[name]] for name in runs}
    jobs = plan_jobs(out, runs, costs, configs)
    wall = run_jobs(jobs, args.jobs, args.threads or max(1, (os.cpu_count() or 1) // args.jobs))

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
                        "small_only_final": baseline_final(size, out / f"small-s{seed}", "small")[0],
                    }
                )
            if results:
                rows.append({"schedule": schedule, "fraction": fraction, "results": results})

    baselines = []
    for scale in budgets:
        seed = seeds[0]
        names = (
            (f"scratch-s{seed}", f"small-s{seed}")
            if scale == 1.0
            else (
                f"large-b{scale:g}-s{seed}",
                f"small-b{scale:g}-s{seed}",
            )
        )
        big_loss, big_flops, big_tpp = baseline_final(size, out / names[0], "large")
        small_loss, _, small_tpp = baseline_final(size, out / names[1], "small")
        baselines.append(
            {
                "budget": scale,
                "flops": big_flops,
                "scratch_final": big_loss,
                "scratch_tokens_per_param": big_tpp,
                "small_only_final": small_loss,
                "small_only_tokens_per_param": small_tpp,
            }
        )
    where = crossover([(b["flops"], b["scratch_final"], b["small_only_final"]) for b in baselines])
    (out / "results.json").write_text(
        json.dumps(
            {
                "size": args.size,
                "corpus": corpus,
                "rows": rows,
                "baselines": baselines,
                "crossover": where,
                "wall_s": wall,
            },
            indent=2,
        )
    )
    print(
        f"size {args.size}: small {size.small} -> final {size.large}; {tps} tokens/step; "
        f"scratch {size.scratch_steps} steps = {scratch_flops:.3g} FLOPs; ramp {ramp}; seeds {seeds}"
    )
    print("| budget (FLOPs) | scratch target final | tokens/param | small shape alone, final | tokens/param | better |")
    print("|" + "---|" * 6)
    for b in baselines:
        better = "scratch target" if b["scratch_final"] < b["small_only_final"] else "small-only"
        print(
            f"| {b['flops']:.3g} ({b['budget']:g}x) | {b['scratch_final']:.4g} | {b['scratch_tokens_per_param']:.2g} "
            f"| {b['small_only_final']:.4g} | {b['small_only_tokens_per_param']:.2g} | {better} |"
        )
    print(f"crossover: {where} (first seed)")
    header = (
        "| schedule | growth at | seeds | FLOPs to reach L* (share of scratch) | speedup | wall-clock share "
        "| grown final | scratch final L* | small-only final | grown - best baseline | post-growth bump |"
    )
    print(header)
    print("|" + "---|" * 11)
    for row in rows:
        res = row["results"]
        shares = [r["flops_share"] for r in res]
        speed = [None if s is None else 1 / s for s in shares]
        margin = [r["grown_final"] - min(r["scratch_final"], r["small_only_final"]) for r in res]
        print(
            f"| {row['schedule']} | {row['fraction']:.0%} ({small_steps[row['fraction']]} small steps) | {len(res)} "
            f"| {mean_spread(shares)} | {mean_spread(speed)}x | {mean_spread([r['wall_share'] for r in res])} "
            f"| {mean_spread([r['grown_final'] for r in res])} | {mean_spread([r['scratch_final'] for r in res])} "
            f"| {mean_spread([r['small_only_final'] for r in res])} | {mean_spread(margin)} "
            f"| {mean_spread([r['bump_pct'] for r in res])}% |"
        )
    print(corpus_id.describe(corpus))
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
    small_dir = out / f"small-s{seed}" / "stage0-small"
    if small_dir.is_dir():
        from training.config import ModelConfig
        from training.config_base import from_dict
        from training.model_size import flops_per_token

        f_small = flops_per_token(from_dict(ModelConfig, size.small))
        alone = curve(small_dir, f_small, size.tokens_per_step, 0.0, 0.0, 0)
        ax.plot([p.flops for p in alone], [p.loss for p in alone], "k--", lw=1, label="small shape alone")
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
