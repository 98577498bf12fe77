"""The ``flm`` command: one entry point, one subcommand per job.

Subcommands import their heavy dependencies lazily, so ``flm --help`` is instant and processes
spawned by megatron's checkpoint writer (which re-import ``__main__``) stay cheap.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Callable, Optional

EPILOG = """examples:
  flm config show configs/runs/tiny.yaml parallel.tp=2
  flm train configs/runs/tiny.yaml train.steps=50 --nproc 2 parallel.tp=2
  torchrun --nproc-per-node 4 -m training.cli train configs/runs/tiny.yaml parallel.tp=2 parallel.pp=2
  flm train configs/runs/tiny.yaml --resume            # continue from the latest checkpoint
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (see configs/runs/)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="dotted overrides applied after the YAML, e.g. train.lr=3e-4 parallel.tp=2")


def cmd_config_show(args) -> int:
    import yaml

    from training.config import load_run_config, run_config_to_dict

    cfg = load_run_config(args.config, args.overrides)
    if args.world_size is not None:
        dp = cfg.parallel.data_parallel_size(args.world_size)
        cfg.train.micro_batches(dp)
    print(yaml.safe_dump(run_config_to_dict(cfg), sort_keys=False), end="")
    return 0


def _relaunch_under_torchrun(nproc: int) -> int:
    argv = [a for a in sys.argv[1:]]
    i = argv.index("--nproc")
    del argv[i:i + 2]
    from training.parallel import torchrun_command

    cmd = torchrun_command(nproc, argv)
    print("+ " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd)


def cmd_train(args) -> int:
    # RANK is set by every launcher (torchrun, DeepSpeed's); LOCAL_RANK alone is not a sign of one
    # (the DeepSpeed engine sets LOCAL_RANK=0 in a plain single process, see training/ds_trainer.py)
    if args.nproc and args.nproc > 1 and "RANK" not in os.environ:
        return _relaunch_under_torchrun(args.nproc)
    from training.run import train_from_cli

    return train_from_cli(args)


def build_parser(extra: Optional[list[Callable]] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flm",
        description="Grow and train LLMs (FLM-101B style) on megatron-core; evaluate them with the IQ benchmark.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    cfg = sub.add_parser("config", help="inspect run configs")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    cfg_sub.required = True
    show = cfg_sub.add_parser("show", help="print the resolved, validated config",
                              description="Print the run config after includes and overrides, validated.")
    _add_config_args(show)
    show.add_argument("--world-size", type=int, default=None,
                      help="also check that the layout and batch sizes fit this many processes")
    show.set_defaults(func=cmd_config_show)

    train = sub.add_parser(
        "train", help="train a model (one stage or a whole growth run)",
        description="Train under the layout of the config. Launch several processes with --nproc N "
                    "(re-runs itself under torchrun) or with torchrun directly.",
    )
    _add_config_args(train)
    train.add_argument("--nproc", type=int, default=None, help="processes on this machine (uses torchrun)")
    train.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                       help="continue from CKPT, or from the latest checkpoint of the run when no path is given "
                            "(starts fresh if the run has none)")
    train.add_argument("--init-from", default=None, metavar="CKPT",
                       help="start from the weights of CKPT (fresh optimizer and step 0)")
    train.add_argument("--output-dir", default=None, help="override output_dir of the config")
    train.add_argument("--stage", type=int, default=None, metavar="N",
                       help="staged runs: run only stage N (a cluster job per stage); it starts from the grown "
                            "checkpoint of stage N-1's final one (grown here if missing) or from --init-from")
    train.set_defaults(func=cmd_train)

    for register in _registrations() + (extra or []):
        register(sub)
    return parser


def _registrations() -> list[Callable]:
    """Subcommands owned by other packages (data, growth, IQ benchmark)."""
    regs = []
    for module in ("training.data.cli", "growth.cli", "training.dryrun", "eval_iq.cli", "training.hf.cli", "training.plan.cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        regs.append(mod.register)
    return regs


def main(argv: Optional[list[str]] = None) -> int:
    from training.config_base import ConfigError
    from training.data.errors import DataError

    parser = build_parser()
    # overrides (key=value) may come after options too: argparse stops collecting a positional
    # list at the first option, so gather the rest here
    args, rest = parser.parse_known_args(argv)
    if rest:
        if not hasattr(args, "overrides") or any(r.startswith("-") or "=" not in r for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides = list(args.overrides) + rest
    resume = getattr(args, "resume", None)
    if resume and resume != "latest" and "=" in resume and not os.path.exists(resume):
        # `--resume key=value`: the optional CKPT of --resume swallowed an override
        args.overrides = list(args.overrides) + [resume]
        args.resume = "latest"
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"flm: config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"flm: data error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
