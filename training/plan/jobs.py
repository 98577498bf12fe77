"""Stage sizes for the launch scripts: ``python -m training.plan.jobs RUN.yaml [key=value ...]``.

Prints one tab-separated line per job a launcher may start: ``INDEX NAME WORLD MP OUTPUT_DIR``.
A staged run has one line per stage (INDEX 0, 1, ...; OUTPUT_DIR the stage's directory); a run
without stages has one line with INDEX ``all``. WORLD is the stage's ``tp x pp x dp``, or ``-``
when ``parallel.dp`` is null and ``--gpus`` is not given; MP is ``tp x pp`` (WORLD must be a multiple
of it). With ``--stage N`` only that stage's
line is printed. Config errors go to stderr as for ``flm`` (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Optional

from training.config_base import ConfigError, join_key
from training.errors import FLMError
from training.orchestration.stage_plans import load_run


@dataclass(frozen=True)
class Job:
    index: str
    name: str
    world: Optional[int]
    model_parallel: int
    output_dir: str

    def line(self) -> str:
        return "\t".join(
            [self.index, self.name, str(self.world) if self.world else "-", str(self.model_parallel), self.output_dir]
        )


def jobs(config: str, overrides: list[str], gpus: Optional[int] = None) -> list[Job]:
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
        out.append(Job(index, stage.name, world, p.tp * p.pp, stage.config.output_dir))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.plan.jobs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--gpus", type=int, default=None)
    parser.add_argument("--stage", default=None, help="print only this stage's line")
    args = parser.parse_args(argv)
    try:
        found = jobs(args.config, args.overrides, args.gpus)
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
