"""Stage sizes for the launch scripts: ``python -m training.plan.jobs RUN.yaml [key=value ...]``.

Prints one tab-separated line per job a launcher may start:
``INDEX NAME WORLD MP OUTPUT_DIR SIGNAL_LEAD``. A staged run has one line per stage (INDEX 0, 1,
...; OUTPUT_DIR the stage's directory); a run without stages has one line with INDEX ``all``. WORLD
is the stage's ``tp x pp x dp``, or ``-`` when ``parallel.dp`` is null and ``--gpus`` is not given;
MP is ``tp x pp`` (WORLD must be a multiple of it). SIGNAL_LEAD is the planner's signal lead time in
seconds (``training.plan.ckpt``: the stage's checkpoint save, with a margin, at ``--ckpt-write-gbps``
/ ``--ckpt-read-gbps`` per node, ``--gpus-per-node`` GPUs a node), ``-`` when WORLD is. With
``--stage N`` only that stage's line is printed. Config errors go to stderr as for ``flm`` (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Optional

from training.config_base import ConfigError, join_key
from training.errors import FLMError
from training.orchestration.stage_plans import load_run
from training.plan.ckpt import DEFAULT_READ_GBPS, DEFAULT_WRITE_GBPS, checkpoint_time, precision_of
from training.plan.cli import positive


@dataclass(frozen=True)
class Job:
    index: str
    name: str
    world: Optional[int]
    model_parallel: int
    output_dir: str
    #: seconds before its time limit the job should be told to save and stop (None: world unknown)
    signal_lead_s: Optional[int] = None

    def line(self) -> str:
        return "\t".join(
            [
                self.index,
                self.name,
                str(self.world) if self.world else "-",
                str(self.model_parallel),
                self.output_dir,
                str(self.signal_lead_s) if self.signal_lead_s else "-",
            ]
        )


def jobs(
    config: str,
    overrides: list[str],
    gpus: Optional[int] = None,
    *,
    gpus_per_node: int = 8,
    write_gbps: float = DEFAULT_WRITE_GBPS,
    read_gbps: float = DEFAULT_READ_GBPS,
) -> list[Job]:
    """One ``Job`` per stage (or one for a run without stages)."""
    run = load_run(config, overrides)
    out = []
    for stage in run.stages:
        index = str(stage.index) if run.staged else "all"
        p = stage.config.parallel
        if gpus is not None:
            try:
                p.data_parallel_size(gpus)
            except ConfigError as err:
                raise ConfigError(join_key(stage.key, err.key), err.message) from None
            world: Optional[int] = gpus
        else:
            world = p.tp * p.pp * p.dp if p.dp is not None else None
        lead = None
        if world is not None:
            dp = world // (p.tp * p.pp)
            ckpt = checkpoint_time(
                stage.config.model,
                p,
                dp,
                precision=precision_of(stage.config.train),
                engine=stage.config.engine,
                gpus_per_node=gpus_per_node,
                write_gbps=write_gbps,
                read_gbps=read_gbps,
            )
            lead = ckpt.signal_lead_s
        out.append(Job(index, stage.name, world, p.tp * p.pp, stage.config.output_dir, lead))
    return out


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.plan.jobs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--gpus", type=int, default=None)
    parser.add_argument("--stage", default=None, help="print only this stage's line")
    parser.add_argument("--gpus-per-node", type=_positive_int, default=8)
    parser.add_argument("--ckpt-write-gbps", type=positive, default=DEFAULT_WRITE_GBPS)
    parser.add_argument("--ckpt-read-gbps", type=positive, default=DEFAULT_READ_GBPS)
    args = parser.parse_args(argv)
    try:
        found = jobs(
            args.config,
            args.overrides,
            args.gpus,
            gpus_per_node=args.gpus_per_node,
            write_gbps=args.ckpt_write_gbps,
            read_gbps=args.ckpt_read_gbps,
        )
    except FLMError as err:  # this module is its own entry point (launch/slurm), outside flm's main
        print(f"flm: error: {err}", file=sys.stderr)
        return err.exit_code
    if args.stage is not None:
        found = [j for j in found if j.index == args.stage]
        if not found:
            print(
                f"flm: --stage {args.stage}: the run has stages "
                f"{', '.join(j.index for j in jobs(args.config, args.overrides, args.gpus))}",
                file=sys.stderr,
            )
            return 2
    for job in found:
        print(job.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
