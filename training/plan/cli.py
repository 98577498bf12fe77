"""``flm plan RUN.yaml``: the subcommand (registered by ``training.cli``).

Exit status: 0 when every layout check passes (warnings allowed), 1 when a check reports an
error or a materialized count disagrees with the analytic one, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.errors import UsageError
from training.plan.ckpt import DEFAULT_READ_GBPS, DEFAULT_WRITE_GBPS
from training.plan.hardware import GPUS, gpu_spec

EPILOG = """examples:
  flm plan configs/runs/flm101b.yaml
  flm plan configs/runs/flm101b.yaml --gpus 192 --gpu-type a800 --tflops 162,160,165 --compare-days 9.63,5.37,6.54
  flm plan configs/runs/flm101b.yaml --gpu-type h100 --mfu 0.4 --materialize
  flm plan configs/runs/dryrun.yaml --gpus 2 --measured runs/dryrun      # MFU measured per stage
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"values must be > 0, got {text!r}")
    return values


def positive(text: str) -> float:
    """argparse type: one number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def register(sub) -> None:

    p = sub.add_parser(
        "plan",
        help="size a run before running it: memory per GPU, fit, days, GPU-hours, layout checks",
        description="Per stage: parameters, FLOPs per token, memory per GPU under its layout (weights, "
        "gradients, optimizer states by ZeRO stage, activations with and without recomputation), "
        "whether it fits, tokens per day, days and GPU-hours; the same for the final shape trained "
        "from scratch on the same tokens; layout checks. See docs/cluster.md.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="run config YAML (see configs/runs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted overrides, as for flm train")
    p.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs for every stage (checked against tp x pp x dp); default: each stage's own layout",
    )
    p.add_argument("--gpu-type", default="a100", choices=sorted(GPUS), help="accelerator (default: a100)")
    rate = p.add_argument_group("throughput (model FLOPs; precedence: --measured, --tflops, --mfu; default MFU 0.5)")
    rate.add_argument(
        "--tflops",
        type=_floats,
        default=(),
        metavar="X[,Y..]",
        help="achieved TFLOP/s per GPU, one value or one per stage",
    )
    rate.add_argument(
        "--mfu",
        type=_floats,
        default=(),
        metavar="X[,Y..]",
        help="model FLOPs utilisation (0..1), one value or one per stage",
    )
    rate.add_argument(
        "--measured",
        type=Path,
        default=None,
        metavar="PATH",
        help="MFU measured by flm train: a metrics.jsonl, a run directory, or a staged run's "
        "output_dir (stage<i>-<name>/metrics.jsonl per stage)",
    )
    p.add_argument(
        "--zero",
        type=int,
        choices=(0, 1, 2, 3),
        default=None,
        help="ZeRO stage for the memory estimate (default: the run's: deepspeed.zero_stage under engine: "
        "deepspeed, else 1 with parallel.distributed_optimizer, else 0)",
    )
    p.add_argument(
        "--reserve-gib",
        type=float,
        default=4.0,
        help="GiB per GPU kept free for the CUDA context, NCCL buffers and fragmentation (default 4)",
    )
    p.add_argument("--gpus-per-node", type=int, default=8, help="for the TP-within-a-node check (default 8)")
    io = p.add_argument_group("checkpoint I/O (the save and load + verify times, the timeout recommendation)")
    io.add_argument(
        "--ckpt-write-gbps",
        type=positive,
        default=DEFAULT_WRITE_GBPS,
        metavar="X",
        help=f"write bandwidth of one node to the checkpoint filesystem, GB/s (default {DEFAULT_WRITE_GBPS:g})",
    )
    io.add_argument(
        "--ckpt-read-gbps",
        type=positive,
        default=DEFAULT_READ_GBPS,
        metavar="X",
        help=f"read bandwidth of one node from the checkpoint filesystem, GB/s (default {DEFAULT_READ_GBPS:g})",
    )
    p.add_argument(
        "--compare-days",
        type=_floats,
        default=(),
        metavar="D[,D..]",
        help="reference days per stage to print beside the estimate (e.g. a paper's)",
    )
    p.add_argument(
        "--materialize",
        action="store_true",
        help="also build every rank's model on the meta device and check the per-rank counts",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of tables")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> int:
    import json  # (with the rest) startup time: the planner loads torch and growth/ when the command runs

    from training.orchestration.stage_plans import load_run
    from training.plan.planner import PlanOptions, plan_run
    from training.plan.report import render, to_json

    if any(v > 1 for v in args.mfu):
        raise UsageError(f"--mfu is a fraction of the peak (0..1], got {args.mfu}")
    if args.gpus is not None and args.gpus < 1:
        raise UsageError("--gpus must be >= 1")
    run = load_run(args.config, args.overrides)
    opts = PlanOptions(
        gpu=gpu_spec(args.gpu_type),
        gpus=args.gpus,
        tflops=args.tflops,
        mfu=args.mfu,
        measured=args.measured,
        zero=args.zero,
        reserve_gib=args.reserve_gib,
        gpus_per_node=args.gpus_per_node,
        compare_days=args.compare_days,
        write_gbps=args.ckpt_write_gbps,
        read_gbps=args.ckpt_read_gbps,
    )
    plan = plan_run(run, opts, source=args.config)
    status = 1 if any(f.level == "error" for f in plan.findings) else 0
    materialized = []
    if args.materialize:
        from training.plan.materialize import materialize_stage  # optional heavy dependency: megatron-core

        for planned, stage in zip(plan.stages, run.stages):
            materialized.append(materialize_stage(planned.name, stage.declared_model, stage.config.parallel))
        if any(m.mismatches() for m in materialized):
            status = 1
    if args.json:
        doc = to_json(plan)
        if materialized:
            doc["materialized"] = [
                {
                    "stage": m.name,
                    "ranks": [
                        {
                            "tp_rank": b.tp_rank,
                            "pp_rank": b.pp_rank,
                            "params": b.params,
                            "chunk_params": list(b.chunk_params),
                            "on_meta": b.on_meta,
                        }
                        for b in m.built
                    ],
                    "mismatches": m.mismatches(),
                }
                for m in materialized
            ]
        print(json.dumps(doc, indent=2))
        return status
    print(render(plan))
    if materialized:
        from training.plan.materialize import render as render_materialized  # (as above)

        print()
        print(render_materialized(materialized))
    return status
