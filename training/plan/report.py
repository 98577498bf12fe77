"""Render a ``RunPlan``: text tables for people, a JSON document for scripts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

from training.config_base import to_dict
from training.plan.hardware import GIB
from training.plan.memory import RECOMPUTE_MODES, worst_rank
from training.plan.planner import RunPlan, StagePlan

FLOPS_NOTE = (
    "FLOPs/token = 6 x matmul params + 12·L·s·d·heads (model FLOPs, Megatron's formula without the "
    "recompute term; training/engine/metrics.py); days = tokens x FLOPs/token / (GPUs x TFLOP/s per GPU)"
)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Optional[set[int]] = None) -> str:
    """Plain aligned columns; columns in ``right`` (default: all but the first) are right-aligned."""
    right = set(range(1, len(headers))) if right is None else right
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def count(n: float) -> str:
    """1234 -> 1.23K, 16.4e9 -> 16.4B (two decimals below 10 of the unit, one above)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            return f"{value:.1f}{unit}" if value >= 10 else f"{value:.2f}{unit}"
    return f"{n:.0f}"


def gib(n: float) -> str:
    value = n / GIB
    return f"{value:.1f}" if value >= 0.1 or value == 0 else f"{value:.2g}"


def days(d: float) -> str:
    return f"{d:.2f}" if d >= 0.01 else f"{d:.2g}"


def fits_label(stage: StagePlan) -> str:
    return {"none": "yes", "selective": "w/ selective", "full": "w/ full", None: "NO"}[stage.fits]


def memory_rows(stages: list[StagePlan]) -> list[list[str]]:
    rows = []
    for s in stages:
        heaviest = max(s.memory, key=lambda m: m.params)
        totals = [gib(worst_rank(s.memory, mode).total(mode)) for mode in RECOMPUTE_MODES]
        acts = [gib(max(m.activations[mode] for m in s.memory)) for mode in RECOMPUTE_MODES]
        rows.append(
            [
                s.name,
                s.layout,
                str(s.gpus),
                count(s.params),
                count(heaviest.params),
                f"{s.flops_per_token:.3e}",
                str(s.zero),
                gib(heaviest.weights),
                gib(heaviest.grads),
                gib(heaviest.optimizer),
                *acts,
                *totals,
                fits_label(s),
            ]
        )
    return rows


def time_rows(plan: RunPlan) -> list[list[str]]:
    compare = any(s.reference_days for s in plan.stages)
    rows = []
    for s in plan.stages:
        row = [
            s.name,
            count(s.tokens),
            f"{s.throughput.tflops:.1f}",
            f"{100 * s.throughput.mfu:.1f}%",
            s.throughput.source.split(" ")[0],
            count(s.tokens_per_day),
            f"{100 * s.bubble:.1f}%",
            days(s.days),
            f"{s.gpu_hours:,.0f}",
        ]
        if compare:
            ref = s.reference_days
            row += [f"{ref:.2f}" if ref else "-", f"{100 * (s.days / ref - 1):+.1f}%" if ref else "-"]
        rows.append(row)
    total = [
        "total",
        count(sum(s.tokens for s in plan.stages)),
        "",
        "",
        "",
        "",
        "",
        days(plan.days),
        f"{plan.gpu_hours:,.0f}",
    ]
    if compare:
        refs = [s.reference_days for s in plan.stages]
        if all(refs):
            ref = sum(refs)
            total += [f"{ref:.2f}", f"{100 * (plan.days / ref - 1):+.1f}%"]
        else:
            total += ["-", "-"]
    rows.append(total)
    return rows


def size(n: float) -> str:
    """Bytes in decimal units, as filesystems and bandwidths count them: 1.44 TB, 230 GB, 12 MB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            value = n / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def checkpoint_rows(stages: list[StagePlan]) -> list[list[str]]:
    rows = []
    for s in stages:
        c = s.checkpoint
        rows.append(
            [
                s.name,
                size(c.bytes),
                f"{c.writer_nodes}/{c.nodes}",
                f"{c.save_s / 60:.1f}",
                f"{c.load_s / 60:.1f}",
                str(c.timeout_minutes),
                f"{s.parallel.timeout_minutes:g}",
                str(c.signal_lead_s),
            ]
        )
    return rows


def checkpoint_section(plan: RunPlan) -> str:
    """Per stage: the checkpoint's size, save and load + verify times, the recommended process-group
    timeout beside the configured one, and the Slurm signal lead time (``training.plan.ckpt``)."""
    o = plan.options
    head = (
        f"Checkpoints (minutes; {o.write_gbps:g} GB/s write and {o.read_gbps:g} GB/s read per node assumed, "
        "--ckpt-write-gbps / --ckpt-read-gbps): bf16 weights + fp32 master + Adam m, v (14 B/param, fp32 runs 12); "
        "save = the DP-rank-0 ranks' nodes write it, then every rank hashes its share; load + verify = every rank "
        "reads its TP/PP slice while hashing its share; timeout = recommended parallel.timeout_minutes (2 x the "
        "longer + 5 min); signal lead = seconds before the time limit launch/slurm/submit.sh has Slurm signal a save"
    )
    headers = ["stage", "size", "writer nodes", "save", "load+verify", "timeout", "configured", "signal lead s"]
    return head + "\n" + table(headers, checkpoint_rows(plan.stages))


def render(plan: RunPlan) -> str:
    g = plan.gpu
    head = (
        f"flm plan {plan.source}: {len(plan.stages)} stage(s) on {g.name} "
        f"({g.memory_gib:.1f} GiB, {g.peak_tflops:.0f} TFLOP/s dense bf16 peak); "
        f"{plan.options.reserve_gib:g} GiB reserved per GPU, so {plan.capacity_bytes / GIB:.1f} GiB usable"
    )
    out = [head, FLOPS_NOTE, ""]
    out.append(
        "Model and memory per GPU (GiB). states: the rank holding the most parameters (bf16 weights, fp32 "
        "grads, fp32 master + Adam m, v; ZeRO 1 = distributed optimizer); activations and totals: the worst "
        "pipeline rank, without / with selective / with full recomputation (Korthikanti et al. 2022)"
    )
    out.append(
        table(
            [
                "stage",
                "layout",
                "GPUs",
                "params",
                "params/GPU",
                "FLOPs/token",
                "ZeRO",
                "weights",
                "grads",
                "optim",
                "act none",
                "act sel",
                "act full",
                "total none",
                "total sel",
                "total full",
                "fits",
            ],
            memory_rows(plan.stages),
            right=set(range(2, 16)),
        )
    )
    out.append("")
    out.append(
        "Throughput and time (TFLOP/s and MFU in model FLOPs; bubble = (pp-1)/(micro-batches x vpp), "
        "informational: a given or measured TFLOP/s already includes it)"
    )
    headers = ["stage", "tokens", "TFLOP/s", "MFU", "source", "tokens/day", "bubble", "days", "GPU-hours"]
    if any(s.reference_days for s in plan.stages):
        headers += ["ref days", "diff"]
    out.append(table(headers, time_rows(plan), right=set(range(1, len(headers))) - {4}))
    sc = plan.scratch
    if len(plan.stages) > 1:
        out.append("")
        out.append(
            f"From scratch: the final shape ({plan.stages[-1].name}, {count(sc.params)} params, {sc.layout}) "
            f"on the same {count(sc.tokens)} tokens at {sc.throughput.tflops:.1f} TFLOP/s: {days(sc.days)} "
            f"days, {sc.gpu_hours:,.0f} GPU-hours; growing saves {100 * plan.savings:.1f}% "
            f"({days(plan.days)} vs {days(sc.days)} days)"
        )
    sources = sorted({s.throughput.source for s in plan.stages if s.throughput.source.startswith("measured")})
    for src in sources:
        out.append(f"  {src}")
    if any(s.throughput.source == "default" for s in plan.stages):
        out.append("  (throughput 'default': MFU 50% assumed; pass --mfu, --tflops or --measured)")
    out.append("")
    out.append(lr_section(plan.stages))
    out.append("")
    out.append(checkpoint_section(plan))
    if any(s.mup for s in plan.stages):
        out.append("")
        out.append(mup_section(plan.stages))
    out.append("")
    findings = plan.findings
    out.append(
        "Checks: "
        + (
            "all layouts OK"
            if not findings
            else f"{sum(f.level == 'error' for f in findings)} error(s), "
            f"{sum(f.level == 'warning' for f in findings)} warning(s)"
        )
    )
    for f in findings:
        out.append(f"  {f}")
    return "\n".join(out)


def lr_section(stages: list[StagePlan]) -> str:
    """Each stage's learning rates: its peak (``train.lr``), the LR it starts at (the trainer's
    scheduler: the first stage's peak after warmup, a grown stage's value where it enters a run-level
    schedule, which its re-warmup rises to), warmup / re-warmup steps, and the floor."""
    rows = [
        [
            s.name,
            f"{s.train.lr:.3g}",
            "-" if s.start_lr is None else f"{s.start_lr:.3g}",
            str(s.train.warmup_steps if s.index == 0 else s.train.rewarmup_steps),
            f"{s.train.min_lr:.3g}",
            f"{s.train.lr_decay_style} to step {s.train.lr_decay_steps or s.train.steps}",
        ]
        for s in stages
    ]
    head = "Learning rate (base width under μP; the hidden matrices train at lr / m, below)"
    return (
        head
        + "\n"
        + table(["stage", "peak lr", "LR at start", "(re)warmup", "min lr", "decay"], rows, right={1, 2, 3, 4})
    )


def mup_section(stages: list[StagePlan]) -> str:
    """The per-stage μP multipliers (of the model each stage trains; docs/mup.md)."""
    rows = []
    for s in stages:
        p = s.mup
        if p is None:
            rows.append([s.name, str(s.model.hidden_size), "-", "standard parametrisation", "", "", "", ""])
            continue
        rows.append(
            [
                s.name,
                str(s.model.hidden_size),
                f"{p.width_multiplier:.4g}",
                f"{p.lr:.3g}",
                f"{p.hidden_lr:.3g}",
                f"{p.readout_multiplier:.4g}",
                f"{p.attention_scale:.4g}",
                f"{p.hidden_init_std:.3g}",
            ]
        )
    bases = sorted({s.mup.base_width for s in stages if s.mup})
    head = (
        f"μP (base width {', '.join(map(str, bases))}): m = hidden / base width; Adam LR lr on embeddings, readout, "
        "norms and biases, lr / m on the hidden matrices (QKV, attention output, FC1, FC2); logits x output_multiplier "
        "/ m; attention scores x attention_multiplier / d_head; fresh hidden matrices drawn with init_std / sqrt(m)"
    )
    headers = ["stage", "hidden", "m", "lr", "hidden lr", "readout mult", "attn scale", "hidden init std"]
    return head + "\n" + table(headers, rows)


def stage_json(s: StagePlan) -> dict[str, Any]:
    return {
        "index": s.index,
        "name": s.name,
        "layout": to_dict(s.parallel),
        "dp": s.dp,
        "gpus": s.gpus,
        "tokens": s.tokens,
        "params": s.params,
        "params_per_rank": [r.total for r in s.ranks],
        "flops_per_token": s.flops_per_token,
        "lr": s.train.lr,
        "lr_at_start": s.start_lr,
        "hardware_flops_per_token_full_recompute": s.hardware_flops_per_token,
        "zero": s.zero,
        "precision": s.precision,
        "micro_batches": s.micro_batches,
        "memory_gib": [
            {
                "pp_rank": m.pp_rank,
                "params": m.params,
                "weights": m.weights / GIB,
                "grads": m.grads / GIB,
                "optimizer": m.optimizer / GIB,
                "activations": {k: v / GIB for k, v in m.activations.items()},
                "total": {k: m.total(k) / GIB for k in RECOMPUTE_MODES},
            }
            for m in s.memory
        ],
        "fits": s.fits,
        "tflops": s.throughput.tflops,
        "mfu": s.throughput.mfu,
        "throughput_source": s.throughput.source,
        "tokens_per_day": s.tokens_per_day,
        "bubble": s.bubble,
        "flops_imbalance": s.flops_imbalance,
        "days": s.days,
        "gpu_hours": s.gpu_hours,
        "reference_days": s.reference_days,
        "findings": [{"level": f.level, "key": f.key, "message": f.message} for f in s.findings],
        "mup": None if s.mup is None else dataclasses.asdict(s.mup),
        "checkpoint": {
            "bytes": s.checkpoint.bytes,
            "nodes": s.checkpoint.nodes,
            "writer_nodes": s.checkpoint.writer_nodes,
            "write_s": s.checkpoint.write_s,
            "hash_s": s.checkpoint.hash_s,
            "save_s": s.checkpoint.save_s,
            "load_s": s.checkpoint.load_s,
            "recommended_timeout_minutes": s.checkpoint.timeout_minutes,
            "timeout_minutes": s.parallel.timeout_minutes,
            "signal_lead_s": s.checkpoint.signal_lead_s,
        },
    }


def to_json(plan: RunPlan) -> dict[str, Any]:
    return {
        "source": plan.source,
        "gpu": plan.gpu.key,
        "capacity_gib": plan.capacity_bytes / GIB,
        "stages": [stage_json(s) for s in plan.stages],
        "scratch": stage_json(plan.scratch),
        "days": plan.days,
        "gpu_hours": plan.gpu_hours,
        "savings": plan.savings,
    }
