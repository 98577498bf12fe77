"""Scale rehearsal: the phases that make ranks wait for each other, on 1-8 real gloo processes, and
what they would take on FLM-101B's 192 GPUs (docs/benchmarks.md, "Scale rehearsal").

    python bench/scale_rehearsal.py [--worlds 1,2,4,8] [--sizes s,m,l] [--out DIR] [--write-gbps 1] [--read-gbps 2]

For each world size a process group of that many processes (``torch.multiprocessing``, gloo,
env:// as torchrun starts them) runs, for each model size, the project's own code of each phase:

- ``save``: a checkpoint of the model's fp32 weights and Adam moments (12 B/param) written through
  ``training.checkpoint.logical.write_logical_chunks`` — DCP with the chunks spread over the ranks,
  then the integrity manifest with every rank hashing its share (``atomic.write_atomically``);
- ``load``: ``integrity.load_verified`` of it, every rank reading its share of the tensors (what a
  rank of a model-parallel slice reads) while hashing its share of the files;
- ``grow``: ``orchestration.grow.grow_checkpoint`` (depth doubled by MSG, 51B -> 101B's step): the
  grown checkpoint written by all ranks, without the float64 check;
- ``ref64``: the float64 reference check of that growth, its layers spread over the ranks
  (``orchestration.reference_check``);
- ``engine``: the engine's transition check (``orchestration.transition.verification_loss``) of the
  grown model under DP = world: one forward pass of one global batch (8 x 64 tokens), both sides.

Each rank measures its CPU seconds (``time.process_time``: all its threads, writer and hash threads
included) and wall seconds per phase. The machine this was written for has 2 cores, so 4 and 8 ranks
oversubscribe it: wall time then measures the queue, not the work. The scaling claims therefore rest
on CPU time, with one OpenMP thread per process (``torch.set_num_threads(1)``) so that a rank's
CPU time is its work whatever the other ranks do; time spent waiting for another rank (gloo blocks
in the kernel) or for the disk (fsync) costs no CPU time. Per phase and size the table gives the
slowest rank's CPU seconds, ``x1/w``: that time x world / the one-rank time (1.0 = falls exactly as
1/world), the wait share (1 - mean / slowest rank CPU: the share of the slowest rank's work that an
average rank spends waiting; a phase run by rank 0 alone has 1 - 1/world) and the slowest wall.

Fit: per phase, slowest-rank CPU seconds = a + b x (work / world), least squares over every size and
world, where work is the checkpoint's bytes (save, load: 12 B/param here) or the parameters
(grow: the grown model's; ref64 and engine: both models'). Extrapolation to each ``flm101b.yaml``
stage on 192 GPUs (``extrapolate``) takes the planner's numbers (``training.plan``: parameters,
checkpoint bytes — 14 B/param in bf16 —, nodes, TP x PP, the save and load + verify times of
``training.plan.ckpt``, the throughput) and adds the fitted CPU time of the bytes or parameters one
rank handles there to the disk time at the stated bandwidth per node (``--write-gbps`` /
``--read-gbps``, default ``flm plan``'s: 1 and 2 GB/s, ``training.plan.ckpt``'s conservative
figures for one parallel-filesystem client, not a measurement). Save and load are given twice: as
the megatron engine does them today (megatron's ``dist_checkpointing`` writes each tensor from its
main replica, the DP-rank-0 ranks, and every DP replica reads its whole TP x PP slice), and with
every rank writing and reading 1/world, the protocol measured here. The float64 check (``ref64``)
is not run by default above 1B parameters; its per-rank CPU and its chain's wall are listed for
when it is requested. The last lines state the 101B stage's worst phase both ways against 5 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: model sizes (old shape; growth doubles the depth). Vocabulary small against the layers, as in
#: FLM-101B (embedding + output are 2% of its parameters).
SIZES: dict[str, dict[str, int]] = {
    "xs": {"num_layers": 2, "hidden_size": 128},  # the untimed warm-up (first calls import and cache)
    "s": {"num_layers": 4, "hidden_size": 512},
    "m": {"num_layers": 8, "hidden_size": 512},
    "l": {"num_layers": 8, "hidden_size": 768},
    "xl": {"num_layers": 16, "hidden_size": 1024},
}
PHASES = ("save", "load", "grow", "ref64", "engine")
#: bytes per parameter of the bench's checkpoints (fp32 weights + Adam m, v)
BENCH_BYTES_PER_PARAM = 12
ENGINE_BATCH = 8
SEQ = 64
#: the scaling criterion: slowest-rank CPU x world / one-rank CPU within 1 +- this
SCALING_TOLERANCE = 0.30
#: the must-show bound on the 101B stage's worst phase
WORST_PHASE_LIMIT_S = 300.0


def model_dict(size: str) -> dict[str, Any]:
    s = SIZES[size]
    h = s["hidden_size"]
    return {
        "num_layers": s["num_layers"],
        "hidden_size": h,
        "ffn_hidden_size": 4 * h,
        "num_attention_heads": h // 64,
        "vocab_size": 1024,
        "seq_length": SEQ,
        "normalization": "LayerNorm",
        "activation": "gelu",
        "position_embedding": "rope",
        "tie_embeddings": False,
        "bias": True,
    }


# ------------------------------------------------------------------ arithmetic (tested in-process)


@dataclass(frozen=True)
class Stat:
    """One phase at one size and world size, over its ranks."""

    phase: str
    size: str
    world: int
    work: float
    slowest_cpu: float
    mean_cpu: float
    slowest_wall: float

    @property
    def total_cpu(self) -> float:
        """CPU seconds of all ranks together."""
        return self.mean_cpu * self.world

    @property
    def wait_share(self) -> float:
        """1 - mean / slowest rank CPU: the share of the slowest rank's work an average rank waits."""
        return 0.0 if self.slowest_cpu <= 0 else 1 - self.mean_cpu / self.slowest_cpu


def summarize(rows: Iterable[dict[str, Any]]) -> list[Stat]:
    """Rows ``{phase, size, world, rank, work, cpu, wall}`` (one per rank and phase) -> one ``Stat``
    per (phase, size, world), sorted."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["phase"], r["size"], int(r["world"])), []).append(r)
    out = []
    order = list(SIZES)

    def key(kv):
        (phase, size, world), _ = kv
        return PHASES.index(phase), order.index(size) if size in order else len(order), size, world

    for (phase, size, world), rs in sorted(groups.items(), key=key):
        if len(rs) != world:
            raise ValueError(f"{phase} {size} world {world}: {len(rs)} rank rows")
        cpus = [r["cpu"] for r in rs]
        out.append(Stat(phase, size, world, rs[0]["work"], max(cpus), sum(cpus) / world, max(r["wall"] for r in rs)))
    return out


def inflation(stats: Sequence[Stat]) -> dict[tuple[str, str, int], float]:
    """All ranks' CPU / the one-rank CPU, per (phase, size, world>1): 1.0 when splitting the work
    adds none; x1/w = inflation / (1 - wait share), so a phase whose ranks are balanced (wait share
    ~0) but whose x1/w exceeds 1 does more CPU work in all than one process did — on a shared
    machine, mostly the ranks slowing each other (caches, memory bandwidth, SMT siblings)."""
    one = {(s.phase, s.size): s.slowest_cpu for s in stats if s.world == 1}
    return {
        (s.phase, s.size, s.world): s.total_cpu / one[(s.phase, s.size)]
        for s in stats
        if s.world > 1 and one.get((s.phase, s.size), 0) > 0
    }


def scaling(stats: Sequence[Stat]) -> dict[tuple[str, str, int], float]:
    """slowest CPU x world / the one-rank slowest CPU, per (phase, size, world>1) with a one-rank run."""
    one = {(s.phase, s.size): s.slowest_cpu for s in stats if s.world == 1}
    return {
        (s.phase, s.size, s.world): s.slowest_cpu * s.world / one[(s.phase, s.size)]
        for s in stats
        if s.world > 1 and one.get((s.phase, s.size), 0) > 0
    }


@dataclass(frozen=True)
class Fit:
    """CPU seconds of the slowest rank = a + b x (work per rank)."""

    a: float
    b: float

    def __call__(self, work_per_rank: float) -> float:
        return self.a + self.b * work_per_rank


def fit(points: Sequence[tuple[float, float]]) -> Fit:
    """Least-squares line through ``(work per rank, seconds)``; a single x value: through the origin."""
    n = len(points)
    if n == 0:
        raise ValueError("no points to fit")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return Fit(0.0, my / mx if mx else 0.0)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return Fit(my - b * mx, b)


def fits(stats: Sequence[Stat]) -> dict[str, Fit]:
    """One ``Fit`` per phase over its sizes and worlds (x = work / world)."""
    out = {}
    for phase in PHASES:
        pts = [(s.work / s.world, s.slowest_cpu) for s in stats if s.phase == phase]
        if pts:
            out[phase] = fit(pts)
    return out


@dataclass(frozen=True)
class StageScale:
    """What the extrapolation needs of one stage on the cluster (from the planner)."""

    name: str
    params: float
    old_params: float  # the previous stage's model (0 for the first stage: no growth)
    gpus: int
    nodes: int
    tp_pp: int
    ckpt_bytes: float
    old_ckpt_bytes: float
    save_disk_s: float
    load_disk_s: float
    forward_s: float  # one forward pass of one global batch of this stage's model
    old_forward_s: float  # the same for the previous stage's model under its layout


#: the phases of a run as the megatron engine saves and loads today, and with every rank writing and
#: reading a 1/world share (the bench's measured protocol; megatron's fully parallel save/load)
DEFAULT_PHASES = ("save", "load", "grow", "engine")
SPREAD_PHASES = ("save_spread", "load_spread", "grow", "engine")


def extrapolate(f: dict[str, Fit], st: StageScale, write_gbps: float, read_gbps: float) -> dict[str, float]:
    """Seconds of each phase for stage ``st`` (fitted CPU + disk at the given GB/s per node):

    - ``save``: the planner's save (megatron's DP-rank-0 ranks write, every node hashes its share)
      + CPU for bytes / (TP x PP) (what a writer rank writes);
    - ``save_spread``: every node writes and hashes 1/nodes of the bytes + CPU for bytes / GPUs;
    - ``load``: the planner's load + verify (every rank reads its TP x PP slice, DP replicas alike,
      while the ranks hash their shares) + CPU for bytes / (TP x PP);
    - ``load_spread``: every node reads and hashes 1/nodes of the bytes + CPU for bytes / GPUs;
    - ``grow`` (grown stages): the old checkpoint read and the grown one written, 1/nodes per node,
      + CPU for the grown parameters / GPUs;
    - ``engine``: the planner's forward pass of one global batch of each side;
    - ``ref64``: the float64 check's per-rank CPU for both models' parameters / GPUs; ``ref64_wall``:
      its chain's wall, half of one process's CPU for both models (the chain passes the ranks in
      order; the two models' chains overlap).
    """
    gb = 1e9
    spread_cpu = lambda phase: f[phase](st.ckpt_bytes / st.gpus)  # noqa: E731
    out = {
        "save": st.save_disk_s + f["save"](st.ckpt_bytes / st.tp_pp),
        "save_spread": st.ckpt_bytes / (st.nodes * gb) * (1 / write_gbps + 1 / read_gbps) + spread_cpu("save"),
        "load": st.load_disk_s + f["load"](st.ckpt_bytes / st.tp_pp),
        "load_spread": 2 * st.ckpt_bytes / (st.nodes * read_gbps * gb) + spread_cpu("load"),
    }
    if st.old_params:
        io = st.old_ckpt_bytes / (st.nodes * read_gbps * gb) + st.ckpt_bytes / (st.nodes * write_gbps * gb)
        out["grow"] = io + f["grow"](st.params / st.gpus)
        out["engine"] = st.forward_s + st.old_forward_s
        both = st.params + st.old_params
        out["ref64"] = f["ref64"](both / st.gpus)
        out["ref64_wall"] = f["ref64"](both) / 2
    return out


def bandwidth_factor(f: dict[str, Fit], st: StageScale, write_gbps: float, read_gbps: float) -> float:
    """By how much both assumed bandwidths must grow for the engine's save and load (disk time / k +
    fitted CPU) to fit in ``WORST_PHASE_LIMIT_S`` (inf when the CPU alone does not)."""
    e = extrapolate(f, st, write_gbps, read_gbps)
    need = 0.0
    for phase, disk in (("save", st.save_disk_s), ("load", st.load_disk_s)):
        cpu = e[phase] - disk
        if cpu >= WORST_PHASE_LIMIT_S:
            return math.inf
        need = max(need, disk / (WORST_PHASE_LIMIT_S - cpu))
    return need


def worst(phases: dict[str, float], names: Sequence[str]) -> tuple[str, float]:
    """The longest of ``names`` present in ``phases``."""
    present = [(phases[n], n) for n in names if n in phases]
    seconds, name = max(present)
    return name, seconds


def stage_scales(run_path: Path, gpus: int, gpu_type: str, write_gbps: float, read_gbps: float) -> list[StageScale]:
    """The planner's numbers for every stage of ``run_path`` on ``gpus`` GPUs."""
    from training.orchestration.stage_plans import load_run
    from training.plan.hardware import GPUS
    from training.plan.planner import PlanOptions, plan_run

    plan = plan_run(
        load_run(run_path), PlanOptions(gpu=GPUS[gpu_type], gpus=gpus, write_gbps=write_gbps, read_gbps=read_gbps)
    )
    out: list[StageScale] = []
    prev, prev_forward = None, 0.0
    for s in plan.stages:
        step_tokens = s.train.global_batch_size * s.model.seq_length
        forward = step_tokens * s.flops_per_token / 3 / (s.gpus * s.throughput.tflops * 1e12)
        out.append(
            StageScale(
                name=s.name,
                params=float(s.params),
                old_params=float(prev.params) if prev else 0.0,
                gpus=s.gpus,
                nodes=s.checkpoint.nodes,
                tp_pp=s.parallel.tp * s.parallel.pp,
                ckpt_bytes=s.checkpoint.bytes,
                old_ckpt_bytes=prev.checkpoint.bytes if prev else 0.0,
                save_disk_s=s.checkpoint.save_s,
                load_disk_s=s.checkpoint.load_s,
                forward_s=forward,
                old_forward_s=prev_forward,
            )
        )
        prev, prev_forward = s, forward
    return out


# ------------------------------------------------------------------ the measured run (per rank)


def _measure(phase: str, size: str, world: int, rank: int, work: float, fn: Callable[[], Any], rows: list) -> Any:
    import torch.distributed as dist

    dist.barrier()
    c0, w0 = time.process_time(), time.perf_counter()
    result = fn()
    rows.append(
        {
            "phase": phase,
            "size": size,
            "world": world,
            "rank": rank,
            "work": work,
            "cpu": time.process_time() - c0,
            "wall": time.perf_counter() - w0,
        }
    )
    return result


def _entries(cfg) -> list:
    """The checkpoint's tensors, produced on demand: weights ~ N(0, 0.02^2) (norm gains 1, biases 0),
    moments small positive values; deterministic per (key, chunk)."""
    import torch

    from growth.roles import logical_keys, role_of
    from growth.shape import ModelShape
    from training.checkpoint.dcp_io import ChunkedTensor
    from training.checkpoint.logical import layer_rows, moment_key

    shapes = ModelShape.from_model_config(cfg, 1)
    from growth.roles import tensor_shape

    entries = []
    for n, key in enumerate(logical_keys(cfg)):
        shape = tensor_shape(role_of(key), shapes, cfg.activation == "swiglu")
        rows = layer_rows(key)

        def produce(i, key=key, shape=shape, rows=rows, n=n, kind=0):
            gen = torch.Generator().manual_seed(1000 * n + i)
            chunk = (min(rows, shape[0] - i * rows), *shape[1:]) if rows else shape
            if "norm" in key and key.endswith("weight"):
                return torch.ones(chunk)
            if key.endswith("bias"):
                return torch.zeros(chunk)
            return torch.randn(chunk, generator=gen) * 0.02

        def moment(i, shape=shape, rows=rows):
            chunk = (min(rows, shape[0] - i * rows), *shape[1:]) if rows else shape
            return torch.full(chunk, 1e-4)

        entries.append(ChunkedTensor(key, shape, torch.float32, produce, rows))
        for m in ("exp_avg", "exp_avg_sq"):
            entries.append(ChunkedTensor(moment_key(m, key), shape, torch.float32, moment, rows))
    return entries


def _load_share(path: Path, rank: int, world: int) -> None:
    """Read this rank's share of the checkpoint's chunks (one stored chunk = one layer of one tensor)."""
    from training.checkpoint.dcp_io import TensorReader

    reader = TensorReader(path)
    chunks: list[tuple[str, Optional[int]]] = []
    for k in sorted(reader.keys()):
        if reader.stored_rows(k) == 1:
            chunks += [(k, i) for i in range(reader.shape(k)[0])]
        else:
            chunks.append((k, None))
    for k, i in chunks[rank::world]:
        reader.read(k) if i is None else reader.read(k, i, 1)


def _engine_trainer(model: dict, world: int, out: Path):
    from training.config import RunConfig
    from training.config_base import from_dict
    from training.data.source import MockSource
    from training.engine.factory import make_trainer

    cfg = from_dict(
        RunConfig,
        {
            "name": "rehearsal",
            "output_dir": str(out),
            "model": model,
            "parallel": {"tp": 1, "pp": 1, "dp": world},
            "train": {
                "steps": 1,
                "global_batch_size": ENGINE_BATCH,
                "micro_batch_size": max(1, ENGINE_BATCH // world),
                "precision": "fp32",
                "lr": 1e-4,
                "min_lr": 1e-5,
                "warmup_steps": 0,
                "eval_interval": 1000,
            },
            "data": {"kind": "mock"},
            "checkpoint": {"save_interval": 0},
        },
    )
    source = MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0)
    return make_trainer(cfg, train_source=source, valid_source=source)


def _engine_side(which: str, model: dict, size: str, world: int, rank: int, root: Path, rows: list) -> dict:
    """One side of the engine's transition check, timed (the trainer's build is not)."""
    from training.orchestration.transition import verification_loss

    trainer = _engine_trainer(model, world, root / f"engine-{which}")
    _measure(f"engine-{which}", size, world, rank, 0, lambda: verification_loss(trainer), rows)
    return rows.pop()


def _phases(size: str, world: int, rank: int, root: Path, rows: list) -> None:
    """Every phase at one model size (collective over the process group); rows appended."""
    import torch.distributed as dist

    from growth import prepare_growth
    from growth.plan import load_plan
    from growth.shape import ModelShape
    from training.checkpoint.dcp_io import TensorReader
    from training.checkpoint.integrity import load_verified
    from training.checkpoint.logical import write_logical_chunks
    from training.config import ModelConfig, RunConfig
    from training.config_base import from_dict, to_dict
    from training.model_size import total_params
    from training.orchestration.grow import _verify, grow_checkpoint

    if rank == 0:  # a previous, interrupted run's leftovers
        shutil.rmtree(root, ignore_errors=True)
    dist.barrier()
    model = model_dict(size)
    cfg = from_dict(ModelConfig, model)
    grown_model = dict(model, num_layers=2 * model["num_layers"])
    grown = from_dict(ModelConfig, grown_model)
    n_old, n_new = total_params(cfg), total_params(grown)
    meta = {"config": to_dict(RunConfig(model=cfg)), "step": 1, "consumed_samples": 8, "adam_step": 1}
    src = root / "src"
    _measure(
        "save",
        size,
        world,
        rank,
        n_old * BENCH_BYTES_PER_PARAM,
        lambda: write_logical_chunks(src, _entries(cfg), meta, has_moments=True),
        rows,
    )
    _measure(
        "load",
        size,
        world,
        rank,
        n_old * BENCH_BYTES_PER_PARAM,
        lambda: load_verified(src, lambda p: _load_share(p, rank, world)),
        rows,
    )
    old_shape = ModelShape.from_model_config(cfg, 1)
    plan = load_plan(
        {
            "old": dataclasses.asdict(old_shape),
            "new": dataclasses.asdict(ModelShape.from_model_config(grown, 1)),
            "operators": {"depth": "msg"},
            "depth": {"placement": "interleave", "init": "copy"},
        }
    )
    dst = root / "dst"
    _measure("grow", size, world, rank, n_new, lambda: grow_checkpoint(src, dst, plan, run_verify=False), rows)
    g = prepare_growth(plan, cfg)
    report = _measure("ref64", size, world, rank, n_old + n_new, lambda: _verify(g, plan, TensorReader(src), dst), rows)
    if report.max_abs_dlogit > 1e-10 * (1 + report.max_abs_logit):
        raise RuntimeError(f"{size}: the growth is not exact: {report}")
    old_row = _engine_side("old", model, size, world, rank, root, rows)
    new_row = _engine_side("new", grown_model, size, world, rank, root, rows)
    rows.append(
        {
            "phase": "engine",
            "size": size,
            "world": world,
            "rank": rank,
            "work": n_old + n_new,
            "cpu": old_row["cpu"] + new_row["cpu"],
            "wall": old_row["wall"] + new_row["wall"],
        }
    )
    dist.barrier()
    if rank == 0:
        shutil.rmtree(root, ignore_errors=True)


def _rank(rank: int, world: int, port: int, out: str, sizes: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from training.engine.parallel import init_process_group

    init_process_group()
    _phases("xs", world, rank, Path(out, f"w{world}-warmup"), [])  # first calls: lazy imports, caches
    rows: list[dict[str, Any]] = []
    for size in sizes:
        _phases(size, world, rank, Path(out, f"w{world}-{size}"), rows)
    Path(out, f"rows-w{world}-r{rank}.json").write_text(json.dumps(rows))
    dist.barrier()
    dist.destroy_process_group()


def run(worlds: list[int], sizes: list[str], out: Path) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    from training.local_launch import free_port

    rows: list[dict[str, Any]] = []
    for world in worlds:
        started = time.perf_counter()
        mp.spawn(_rank, args=(world, free_port(), str(out), sizes), nprocs=world)
        for r in range(world):
            rows += json.loads((out / f"rows-w{world}-r{r}.json").read_text())
        print(f"# world {world}: {time.perf_counter() - started:.0f} s wall", flush=True)
    return rows


# ------------------------------------------------------------------ report


def table(stats: Sequence[Stat]) -> str:
    ratio, total = scaling(stats), inflation(stats)
    lines = [
        "| phase | size | work | world | slowest rank CPU s | x1/w | wait share | all ranks' CPU / one rank's | "
        "slowest wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        key = (s.phase, s.size, s.world)
        r, t = ratio.get(key), total.get(key)
        unit = "B" if s.phase in ("save", "load") else "params"
        lines.append(
            f"| {s.phase} | {s.size} | {s.work / 1e6:.1f}M {unit} | {s.world} | {s.slowest_cpu:.3f} | "
            f"{'' if r is None else f'{r:.2f}'} | {s.wait_share:.2f} | {'' if t is None else f'{t:.2f}'} | "
            f"{s.slowest_wall:.2f} |"
        )
    return "\n".join(lines)


def verdicts(stats: Sequence[Stat], size: str) -> list[str]:
    """The 1/world claim at ``size`` per phase: every world within ``SCALING_TOLERANCE``."""
    ratio = scaling(stats)
    out = []
    for phase in PHASES:
        rs = {w: r for (p, s, w), r in ratio.items() if p == phase and s == size}
        if not rs:
            continue
        ok = all(abs(r - 1) <= SCALING_TOLERANCE for r in rs.values())
        listing = ", ".join(f"{w}: {r:.2f}" for w, r in sorted(rs.items()))
        waits = [s.wait_share for s in stats if s.phase == phase and s.size == size and s.world > 1]
        line = f"{phase} at {size}: x1/w {listing} -> {'falls as 1/world' if ok else 'DOES NOT fall as 1/world'}"
        out.append(line + f" (largest wait share {max(waits):.2f})")
    return out


def extrapolation_table(f: dict[str, Fit], stages: Sequence[StageScale], write_gbps: float, read_gbps: float) -> str:
    lines = [
        "| stage | params | checkpoint | save | load | save, 1/world | load, 1/world | grow | engine check | "
        "worst (engine today) | worst (1/world save/load) | ref64 if requested: per-rank CPU / chain wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in stages:
        e = extrapolate(f, st, write_gbps, read_gbps)
        cells = [
            f"{e[k]:.0f} s" if k in e else "—" for k in ("save", "load", "save_spread", "load_spread", "grow", "engine")
        ]
        ref = f"{e['ref64']:.0f} s / {e['ref64_wall']:.0f} s" if "ref64" in e else "—"
        today, spread = worst(e, DEFAULT_PHASES), worst(e, SPREAD_PHASES)
        lines.append(
            f"| {st.name} | {st.params / 1e9:.1f}B | {st.ckpt_bytes / 1e12:.2f} TB | "
            + " | ".join(cells)
            + f" | {today[0]} {today[1]:.0f} s | {spread[0]} {spread[1]:.0f} s | {ref} |"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worlds", default="1,2,4,8")
    ap.add_argument("--sizes", default="s,m,l", help=f"of {','.join(SIZES)}")
    ap.add_argument("--out", type=Path, default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--rows", type=Path, default=None, help="report rows saved by an earlier run (no measuring)")
    ap.add_argument("--run", type=Path, default=REPO / "configs" / "runs" / "flm101b.yaml")
    ap.add_argument("--gpus", type=int, default=192)
    ap.add_argument("--gpu-type", default="a800")
    ap.add_argument("--write-gbps", type=float, default=None, help="per node (default: flm plan's)")
    ap.add_argument("--read-gbps", type=float, default=None, help="per node (default: flm plan's)")
    args = ap.parse_args(argv)
    from training.plan.ckpt import DEFAULT_READ_GBPS, DEFAULT_WRITE_GBPS

    write_gbps = args.write_gbps or DEFAULT_WRITE_GBPS
    read_gbps = args.read_gbps or DEFAULT_READ_GBPS
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        ap.error(f"--sizes: unknown {unknown}; choose from {', '.join(SIZES)}")
    if args.rows:
        rows = json.loads(args.rows.read_text())
    else:
        out = args.out or Path(tempfile.mkdtemp(prefix="flm-rehearsal-"))
        out.mkdir(parents=True, exist_ok=True)
        print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; scratch {out}", flush=True)
        rows = run([int(w) for w in args.worlds.split(",")], sizes, out)
        (out / "rows.json").write_text(json.dumps(rows))
        print(f"# rows saved to {out / 'rows.json'} (--rows re-reports them)")
    stats = summarize(rows)
    print(table(stats))
    print()
    largest = max({s.size for s in stats}, key=lambda s: max(x.work for x in stats if x.size == s))
    for line in verdicts(stats, largest):
        print(line)
    f = fits(stats)
    print()
    for phase, fi in f.items():
        unit = "B" if phase in ("save", "load") else "param"
        print(f"fit {phase}: slowest-rank CPU s = {fi.a:.3g} + {fi.b:.3g} x ({unit} per rank)")
    stages = stage_scales(args.run, args.gpus, args.gpu_type, write_gbps, read_gbps)
    print()
    print(
        f"Extrapolated to {args.run.name} on {args.gpus} {args.gpu_type} GPUs (8 per node), disk "
        f"{write_gbps:g} GB/s write / {read_gbps:g} GB/s read per node:"
    )
    print(extrapolation_table(f, stages, write_gbps, read_gbps))
    last = extrapolate(f, stages[-1], write_gbps, read_gbps)
    for label, names in (
        ("as the megatron engine saves and loads today", DEFAULT_PHASES),
        ("with every rank writing and reading 1/world", SPREAD_PHASES),
    ):
        name, seconds = worst(last, names)
        verdict = "under" if seconds < WORST_PHASE_LIMIT_S else "NOT under"
        print(f"{stages[-1].name}, {label}: worst phase {name} {seconds:.0f} s ({verdict} {WORST_PHASE_LIMIT_S:.0f} s)")
    k = bandwidth_factor(f, stages[-1], write_gbps, read_gbps)
    print(
        f"{stages[-1].name}: the engine's save and load + verify fit in {WORST_PHASE_LIMIT_S:.0f} s from "
        f"{k:.2f} x the assumed bandwidth ({k * write_gbps:.2f} GB/s write, {k * read_gbps:.2f} GB/s read per node)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
