"""The ``flm`` command: one entry point, one subcommand per job, one error handler.

Every subcommand registers itself from its own module (``register(subparsers)``); those modules
import only what building the parser needs, so ``flm --help`` stays instant and the processes
megatron's checkpoint writer spawns (which re-import ``__main__``) stay cheap.

``main`` is the only place that reports errors: an ``FLMError`` (``training.errors``) becomes one
line ``flm <command>: error: <message>`` and its ``exit_code``; anything else is a bug and keeps its
traceback. It also sets up the project's logger once (``training.log``, rank-aware).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
from typing import Optional

from eval_iq import cli as iq_cli
from eval_iq import watch as eval_cli
from training.apps import dryrun
from training.errors import PREEMPT_MARKER_ENV, PREEMPTED_EXIT_CODE, FLMError
from training.hf import cli as hf_cli
from training.local_launch import torchrun_command
from training.log import setup_logging
from training.mup import cli as mup_cli
from training.orchestration import ckpt_cli, data_cli, grow_cli
from training.plan import cli as plan_cli

log = logging.getLogger(__name__)

EPILOG = """examples:
  flm config show configs/runs/tiny.yaml parallel.tp=2
  flm train configs/runs/tiny.yaml train.steps=50 --nproc 2 parallel.tp=2
  torchrun --nproc-per-node 4 -m training.cli train configs/runs/tiny.yaml parallel.tp=2 parallel.pp=2
  flm train configs/runs/tiny.yaml --resume            # continue from the latest checkpoint
"""

#: subcommands owned by other modules: each has ``register(subparsers)``
REGISTRATIONS = (data_cli, grow_cli, ckpt_cli, dryrun, iq_cli, eval_cli, hf_cli, plan_cli, mup_cli)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (see configs/runs/)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="dotted overrides applied after the YAML, e.g. train.lr=3e-4 parallel.tp=2",
    )


def cmd_config_show(args) -> int:
    import yaml  # startup time: loaded when the command runs, not for `flm --help`

    from eval_iq.stage_eval import check_iq_eval  # (with the above)
    from training.config import run_config_to_dict  # startup time (as above)
    from training.orchestration.stage_plans import load_run  # startup time: imports growth/ and torch

    run = load_run(args.config, args.overrides)
    check_iq_eval(run)
    if args.world_size is not None:
        run.check_layouts(args.world_size)
    print(yaml.safe_dump(run_config_to_dict(run.config), sort_keys=False), end="")
    return 0


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux; elsewhere a no-op).

    The torchrun agent ``flm --nproc`` starts, and each worker of a launcher, get SIGTERM when the
    process that started them is gone (killed with -9 too), so no worker trains on unsupervised:
    SIGTERM makes a worker finish its step, save and exit (``PREEMPTED_EXIT_CODE``)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os.kill(os.getpid(), sig)


def _relaunch_under_torchrun(nproc: int) -> int:
    """``flm --nproc N``: run this command under torchrun and supervise it.

    SIGTERM/SIGUSR1/SIGINT to this launcher go on to torchrun as SIGTERM (torchrun's handled
    signal: it passes it to the workers, which save and stop); the launcher returns the workers'
    ``PREEMPTED_EXIT_CODE`` (torchrun reports a plain failure for it). torchrun and its workers get
    SIGTERM when the launcher dies, however it dies."""
    argv = list(sys.argv[1:])
    i = argv.index("--nproc")
    del argv[i : i + 2]
    cmd = torchrun_command(nproc, argv)
    log.info("+ %s", " ".join(cmd))
    fd, marker = tempfile.mkstemp(prefix="flm-preempted-")
    os.close(fd)
    os.unlink(marker)
    env = dict(os.environ, **{PREEMPT_MARKER_ENV: marker})
    proc = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)

    def forward(signum, frame):
        proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if os.path.exists(marker):
        os.unlink(marker)
        return PREEMPTED_EXIT_CODE
    return code if code >= 0 else 128 - code


PID_DIR_ENV = "FLM_PID_DIR"


def _write_pid_file() -> None:
    """``FLM_PID_DIR`` set (launch/slurm/stage.sbatch): record this worker's pid there, so the job
    script can signal the trainers themselves (a signal to torchrun or srun would end the step)."""
    directory = os.environ.get(PID_DIR_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{socket.gethostname()}.{os.environ['RANK']}.pid"), "w") as f:
            f.write(f"{os.getpid()}\n")


def cmd_train(args) -> int:
    # RANK is set by every launcher (torchrun, DeepSpeed's); LOCAL_RANK alone is not a sign of one
    # (the DeepSpeed engine sets LOCAL_RANK=0 in a plain single process, see training/engine/ds_trainer.py)
    if args.nproc and args.nproc > 1 and "RANK" not in os.environ:
        from training.orchestration.stage_plans import load_train_args  # startup time (as in cmd_config_show)

        # a config or layout error now, in one process, rather than from every worker torchrun would start
        run = load_train_args(args)
        only = run.staged and args.stage is not None and 0 <= args.stage < len(run.stages)  # (else: the workers say)
        run.check_layouts(args.nproc, [args.stage] if only else None)
        return _relaunch_under_torchrun(args.nproc)
    if "RANK" in os.environ:  # a worker of a launcher: stop (saving) when the launcher is gone
        die_with_parent()
        _write_pid_file()
    # startup time: the engine (megatron, torch) loads only to train
    from eval_iq.stage_eval import check_iq_eval
    from training.orchestration.run import train_from_cli

    return train_from_cli(args, preflight=check_iq_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flm",
        description="Grow and train LLMs (FLM-101B style) on megatron-core; evaluate them with the IQ benchmark.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug messages, and the third-party warnings that are hidden by default",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    cfg = sub.add_parser("config", help="inspect run configs")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    cfg_sub.required = True
    show = cfg_sub.add_parser(
        "show",
        help="print the resolved, validated config",
        description="Print the run config after includes and overrides, validated.",
    )
    _add_config_args(show)
    show.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="also check that the layout and batch sizes fit this many processes",
    )
    show.set_defaults(func=cmd_config_show)

    train = sub.add_parser(
        "train",
        help="train a model (one stage or a whole growth run)",
        description="Train under the layout of the config. Launch several processes with --nproc N "
        "(re-runs itself under torchrun) or with torchrun directly.",
    )
    _add_config_args(train)
    train.add_argument("--nproc", type=int, default=None, help="processes on this machine (uses torchrun)")
    train.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CKPT",
        help="continue from CKPT, or from the latest checkpoint of the run when no path is given "
        "(starts fresh if the run has none)",
    )
    train.add_argument(
        "--init-from", default=None, metavar="CKPT", help="start from the weights of CKPT (fresh optimizer and step 0)"
    )
    train.add_argument("--output-dir", default=None, help="override output_dir of the config")
    train.add_argument(
        "--stage",
        type=int,
        default=None,
        metavar="N",
        help="staged runs: run only stage N (a cluster job per stage); it starts from the grown "
        "checkpoint of stage N-1's final one (grown here if missing) or from --init-from",
    )
    train.set_defaults(func=cmd_train)

    for module in REGISTRATIONS:
        module.register(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> argparse.Namespace:
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
    return args


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    setup_logging(verbose=args.verbose, command=args.command)
    try:
        return int(args.func(args) or 0)
    except FLMError as err:
        print(f"flm {args.command}: error: {err}", file=sys.stderr)
        if err.exit_code == PREEMPTED_EXIT_CODE and os.environ.get(PREEMPT_MARKER_ENV):
            with open(os.environ[PREEMPT_MARKER_ENV], "a"):
                pass
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
