"""``flm grow SRC DST --plan PLAN.yaml [--verify]``."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = """plan file (see docs/growth.md; `old` may be omitted: it is read from SRC):
  new: {layers: 4, hidden: 128, ffn: 512, heads: 8, query_groups: 8, head_dim: 16, vocab: 512}
  operators: {hidden: msg, ffn: msg, heads: msg, depth: msg}
  depth: {placement: interleave, init: copy}
  ramp: {steps: 100}
  tp: 2

then continue training the grown model (any layout):
  flm train RUN.yaml model=... --init-from DST
"""


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "grow",
        help="grow a checkpoint's width/depth with function-preserving operators",
        description="Read SRC (a checkpoint saved under any TP/PP/DP layout), grow parameters and Adam moments "
        "with the plan, write DST (loadable under any layout with flm train --init-from). Streams: "
        "one layer of one tensor is grown and written at a time, so memory stays near the largest "
        "layer slice (or the embedding), never the model. DST must not exist; nothing is left at "
        "DST on failure.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="checkpoint directory (step_N) or a checkpoint root with a 'latest' file")
    p.add_argument("dst", help="new checkpoint directory (must not exist)")
    p.add_argument("--plan", required=True, help="growth plan YAML")
    p.add_argument(
        "--verify",
        action="store_true",
        help="run a fixed batch through the old model (read from SRC) and the grown one (read back "
        "from what was written), float64, masks at 0, one layer in memory at a time; prints max "
        "|dlogit| and |dloss|; with exact operators, fails (exit 1, no DST) unless they agree",
    )
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from training.orchestration.grow import (
        grow_from_files,  # startup time: torch loads when the command runs, not for `flm --help`
    )

    report = grow_from_files(Path(args.src), Path(args.dst), Path(args.plan), verify=args.verify)
    print(report.summary())
    return 0
