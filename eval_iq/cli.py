"""``flm iq``: run the IQ benchmark on a Hugging Face model directory or a project checkpoint.

Wiring: the project's ``flm`` command calls :func:`register` with its subparsers. Standalone:
``python -m eval_iq.cli [options]`` (same options, via :func:`main`).

Outputs (in ``--output-dir``): ``results.json`` (scores, chance levels, categories, FLM IQ,
settings, instance hashes, paper scores), ``lm_eval_results.json`` (lm-eval's raw results),
``samples/<task>.jsonl`` (per-sample prompts, responses and scores), ``report.md`` (table beside
the paper's GPT-3 / GLM-130B / FLM-101B rows) and ``report.png`` (bar chart with chance marks).
``--export-instances DIR`` writes the generated instances as JSONL and evaluates nothing.

Runs are offline by default (no network access at all); ``--online`` allows hub model ids and the
hub copies of SuperGLUE/CLUE. Exit codes: 0 success, 2 usage or data error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from eval_iq.errors import IQError
from eval_iq.generate import DEFAULT_SEED
from training.errors import FLMError
from training.log import setup_logging

log = logging.getLogger(__name__)

HELP = "run the FLM IQ benchmark (symbolic mapping, rules, patterns, anti-interference)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        choices=("hf", "flm"),
        default="hf",
        help="hf: a Hugging Face model via lm-eval's hf backend; flm: a project checkpoint",
    )
    p.add_argument("--model-path", help="Hugging Face model directory (or hub id with --online); for --model hf")
    p.add_argument("--checkpoint", help="project checkpoint directory; for --model flm")
    p.add_argument(
        "--subtasks",
        default="all",
        help="comma-separated subtasks, categories (rules, ...), families (superglue, clue) or 'all'",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N instances of each subtask")
    p.add_argument("--size", type=int, help="generate N instances per subtask instead of the spec's default")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"instance seed (default {DEFAULT_SEED})")
    p.add_argument(
        "--shots",
        type=int,
        help="demonstrations per prompt for every selected subtask (per label for symbolic mapping)",
    )
    p.add_argument("--data-dir", help="SuperGLUE/CLUE directory for symbolic mapping (default $FLM_IQ_DATA_DIR)")
    p.add_argument("--output-dir", default="iq-results", help="where results go (default ./iq-results)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="torch device for --model hf (default cpu)")
    p.add_argument("--dtype", default="float32", help="weights dtype for --model hf (default float32)")
    p.add_argument(
        "--parallelize",
        action="store_true",
        help="--model hf: spread the model over all visible GPUs (accelerate device_map='auto'; "
        "--device is where inputs go)",
    )
    p.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="run the subtasks whose data is available and record the others as skipped",
    )
    p.add_argument("--online", action="store_true", help="allow network access (hub models and datasets)")
    p.add_argument("--export-instances", metavar="DIR", help="write instances as JSONL to DIR and exit")
    p.add_argument("--list", action="store_true", help="list subtasks with defaults and chance levels, then exit")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``iq`` subcommand to an argparse subparsers object; its handler is :func:`run`."""
    parser = subparsers.add_parser(
        "iq", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _list_subtasks() -> str:
    from eval_iq.registry import SUBTASKS  # startup time: loaded when the command runs, not for flm's parser

    rows = [f"{'subtask':24} {'lm-eval task':32} {'category':18} {'size':>5} {'shots':>9} {'chance':>7}"]
    for s in SUBTASKS.values():
        shots = f"{s.default_shots}/label" if s.shots_unit == "per_label" else str(s.default_shots)
        extra = "" if s.in_benchmark else "  (extra, not in groups)"
        rows.append(
            f"{s.name:24} {s.task:32} {s.category:18} {s.default_size:>5} {shots:>9} {100 * s.chance:>6.1f}%{extra}"
        )
    return "\n".join(rows)


def _check_positive(args: argparse.Namespace) -> None:
    for name in ("limit", "size", "batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise IQError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.shots is not None and args.shots < 0:
        raise IQError(f"--shots must be >= 0, got {args.shots}")
    if args.seed < 0:
        raise IQError(f"--seed must be >= 0, got {args.seed}")


def _export(specs, settings, out_dir: Path) -> None:
    from eval_iq.generate import generate  # startup time: loaded when the command runs, not for flm's parser
    from eval_iq.instances import write_jsonl

    for spec in specs:
        insts = generate(spec.name, settings.seed, settings.size, settings.shots, settings.data_dir)
        print(write_jsonl(insts, out_dir / f"{spec.task}.jsonl"))


def _build_lm(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    if args.model == "hf":
        if not args.model_path:
            raise IQError("--model hf needs --model-path DIR (a Hugging Face model directory)")
        path = Path(args.model_path).expanduser()
        if not args.online and not path.is_dir():
            raise IQError(
                f"model directory not found: {path} (offline runs need a local directory; pass --online for a hub id)"
            )
        # startup time: loaded when the command runs, not for flm's parser
        from lm_eval.models.huggingface import HFLM

        from training.hf.errors import HFInteropError
        from training.hf.flm_arch import trust_remote_code

        pretrained = str(path) if path.is_dir() else args.model_path

        try:  # FLM-shaped exports of this project carry its own model code
            trust = path.is_dir() and trust_remote_code(path)
        except HFInteropError as err:
            raise IQError(str(err)) from None
        lm = HFLM(
            pretrained=pretrained,
            device=args.device,
            batch_size=args.batch_size,
            dtype=args.dtype,
            trust_remote_code=trust,
            parallelize=args.parallelize,
        )
        return lm, {"backend": "hf", "path": pretrained, "name": Path(pretrained).name or pretrained}
    if not args.checkpoint:
        raise IQError("--model flm needs --checkpoint DIR (a project checkpoint directory)")
    from eval_iq.adapter import (  # startup time: loaded when the command runs, not for flm's parser
        BackendLM,
        load_project_backend,
    )

    backend = load_project_backend(args.checkpoint)
    lm = BackendLM(backend, batch_size=args.batch_size)
    name = Path(args.checkpoint).resolve().name
    return lm, {"backend": "flm", "path": str(args.checkpoint), "name": name}


def run(args: argparse.Namespace) -> int:
    """Handler of ``flm iq``; returns the process exit code (errors are ``IQError``s, reported by
    the caller: ``flm``'s main, or :func:`main` here)."""
    from eval_iq.registry import resolve_subtasks  # startup time: loaded when the command runs, not for flm's parser

    if args.list:
        print(_list_subtasks())
        return 0
    _check_positive(args)
    specs = resolve_subtasks(args.subtasks)
    if not args.online:
        from eval_iq.offline import enable_offline_mode  # startup time: loaded when the command runs

        enable_offline_mode()
    import datasets  # startup time: loaded when the command runs, not for flm's parser

    datasets.disable_progress_bars()
    from eval_iq.runner import (  # startup time: loaded when the command runs, not for flm's parser
        RunSettings,
        benchmark,
        instance_digest,
        make_plan,
    )
    from eval_iq.symbolic_data import resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is not None and not data_dir.is_dir():
        raise IQError(f"--data-dir not found: {data_dir}")
    settings = RunSettings(seed=args.seed, size=args.size, shots=args.shots, limit=args.limit, data_dir=data_dir)
    plan = make_plan(specs, data_dir, args.skip_unavailable)
    for name, reason in plan.skipped.items():
        log.warning("skipping %s: %s", name, reason)
    if args.export_instances:
        _export(plan.run, settings, Path(args.export_instances))
        return 0
    digests = {s.name: instance_digest(s, settings) for s in plan.run}  # data errors before model loading
    lm, model_info = _build_lm(args)

    from eval_iq.report import (  # startup time: loaded when the command runs, not for flm's parser
        markdown_table,
        write_outputs,
    )

    settings_doc = {
        "seed": settings.seed,
        "size": settings.size,
        "shots": settings.shots,
        "limit": settings.limit,
        "data_dir": str(data_dir) if data_dir else None,
        "online": bool(args.online),
        "batch_size": args.batch_size,
    }
    summary, lm_results = benchmark(lm, plan, settings, model_info, settings_doc, digests)
    paths = write_outputs(summary, lm_results, Path(args.output_dir))
    print(markdown_table(summary))
    for kind in ("results", "table", "chart"):
        print(f"{kind}: {paths[kind]}")
    print(f"samples: {Path(args.output_dir) / 'samples'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flm iq", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return run(args)
    except FLMError as err:  # this is an entry point of its own (python -m eval_iq.cli)
        print(f"flm iq: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
