"""``flm mup coord-check``, ``flm mup sweep`` and ``flm predict`` (registered by ``training.cli``).

Building the parser imports nothing heavy; each command loads its module when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.errors import UsageError

EPILOG_MUP = """examples:
  flm mup coord-check configs/runs/tiny.yaml --widths 64,128,256,512,1024 --steps 4
  flm mup coord-check configs/runs/tiny.yaml model.mup.base_width=64 --out runs/coord-mup
  flm mup sweep configs/runs/tiny.yaml data.kind=default model.vocab_size=2048 --widths 64,256 \\
      --lr 1e-3,2e-3,4e-3,8e-3,1.6e-2 --steps 300 --seeds 1,2
"""

EPILOG_PREDICT = """examples:
  flm predict configs/runs/tiny.yaml data.kind=default model.vocab_size=2048 --widths 32,48,64,96 \\
      --step 300 --target-width 384
  flm predict RUN.yaml --widths 64,128,192,256 --step 1000 --measure     # also train the target
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (see configs/runs/); the proxies are this run at other widths")
    p.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="dotted overrides of the run config, as for flm train"
    )
    p.add_argument(
        "--stage",
        type=int,
        default=None,
        metavar="N",
        help="a staged run: take the model and train section of stage N",
    )


def _loss_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metric",
        choices=("val_loss", "loss"),
        default="val_loss",
        help="the loss read from each proxy's metrics.jsonl: validation loss (default; recorded every "
        "train.eval_interval steps and at the last) or train loss",
    )
    p.add_argument(
        "--window",
        type=int,
        default=1,
        metavar="K",
        help="--metric loss: average the train loss over the last K steps (default 1)",
    )
    p.add_argument(
        "--steps", type=int, default=None, metavar="N", help="train each proxy N steps (default: train.steps)"
    )


def _out_dir(args, base, default: str) -> Path:
    return Path(args.out) if args.out else Path(base.output_dir) / default


def _check_positive(value, option: str) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{option} must be >= 1, got {value}")


def cmd_coord_check(args) -> int:
    # startup time: torch, megatron and matplotlib load only when the command runs
    from training.mup import coord_check
    from training.mup.proxies import load_base, parse_widths

    _check_positive(args.steps, "--steps")
    widths = parse_widths(args.widths)
    if len(widths) < 2:
        raise UsageError("--widths: a slope against width needs at least two widths")
    base = load_base(args.config, [*coord_check.CHECK_DEFAULTS, *args.overrides], args.stage)
    out = _out_dir(args, base, "coord-check")
    result = coord_check.run_coord_check(base, widths, steps=args.steps, out_dir=out, config_name=args.config)
    json_path, png = coord_check.write(result, out, draw=not args.no_plot)
    print(coord_check.summary(result))
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))
    return 0


def cmd_sweep(args) -> int:
    # startup time: the proxies' machinery loads only when the command runs
    from training.mup import sweep
    from training.mup.proxies import load_base, parse_floats, parse_ints, parse_widths

    _check_positive(args.steps, "--steps")
    _check_positive(args.window, "--window")
    widths = parse_widths(args.widths)
    lrs = parse_floats(args.lr, "--lr")
    base = load_base(args.config, args.overrides, args.stage)
    seeds = [base.train.seed] if args.seeds is None else parse_ints(args.seeds, "--seeds", minimum=0)
    out = _out_dir(args, base, "mup-sweep")
    result = sweep.run_sweep(
        base,
        widths=widths,
        lrs=lrs,
        seeds=seeds,
        out_dir=out,
        steps=args.steps,
        metric=args.metric,
        window=args.window,
        config_name=args.config,
    )
    path = sweep.write(result, out)
    print(result.table())
    print(f"wrote {path}")
    return 0


def cmd_predict(args) -> int:
    # startup time: the proxies' machinery and scipy load only when the command runs
    from training.mup import predict
    from training.mup.proxies import load_base, parse_ints, parse_widths

    _check_positive(args.steps, "--steps")
    _check_positive(args.target_width, "--target-width")
    widths = parse_widths(args.widths)
    base = load_base(args.config, args.overrides, args.stage)
    out = _out_dir(args, base, "predict")
    result = predict.run_predict(
        base,
        widths=widths,
        step=args.step,
        out_dir=out,
        target_width=args.target_width,
        seeds=None if args.seeds is None else parse_ints(args.seeds, "--seeds", minimum=0),
        steps=args.steps,
        metric=args.metric,
        window=args.window,
        measure=args.measure,
        config_name=args.config,
    )
    path = predict.write(result, out)
    print(result.report())
    print(f"wrote {path}")
    return 0


def register(sub) -> None:
    mup = sub.add_parser(
        "mup",
        help="μP tools: coordinate check, learning-rate sweep on proxies",
        description="μP tools on proxies of a run (the run's config at other widths; docs/mup.md).",
        epilog=EPILOG_MUP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mup_sub = mup.add_subparsers(dest="mup_command", metavar="ACTION")
    mup_sub.required = True

    cc = mup_sub.add_parser(
        "coord-check",
        help="mean |activation| per site against width over a few steps (flat under μP); plot and JSON",
        description="Build the run's model at each width through the trainer, train a few steps on the "
        "run's data, and record the mean |activation| of the embedding output, attention output, MLP output "
        "and logits at each step. Writes coord_check.png (log-log, a panel per site, a line per step) and "
        "coord_check.json, and prints the log-log slopes against width.",
    )
    _config_args(cc)
    cc.add_argument("--widths", default="64,128,256,512,1024", help="hidden sizes (default 64,128,256,512,1024)")
    cc.add_argument("--steps", type=int, default=4, help="training steps watched (default 4)")
    cc.add_argument("--out", default=None, help="output directory (default <output_dir>/coord-check)")
    cc.add_argument("--no-plot", action="store_true", help="write the JSON only")
    cc.set_defaults(func=cmd_coord_check)

    sw = mup_sub.add_parser(
        "sweep",
        help="train proxies over widths x learning rates (x seeds), one process each; best LR per width",
        description="Train every (width, lr, seed) proxy in its own flm train process (one after the other), "
        "read its final loss, and report a table and the best LR per width (sweep.json). Finished proxies "
        "under --out are reused.",
    )
    _config_args(sw)
    sw.add_argument("--widths", required=True, help="hidden sizes, e.g. 64,128")
    sw.add_argument("--lr", required=True, help="learning rates, e.g. 1e-3,2e-3,4e-3 (train.lr)")
    sw.add_argument("--seeds", default=None, help="init seeds (train.seed), e.g. 1,2 (default: the run's)")
    sw.add_argument("--out", default=None, help="output directory (default <output_dir>/mup-sweep)")
    _loss_args(sw)
    sw.set_defaults(func=cmd_sweep)
    _register_predict(sub)


def _register_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict a wider model's loss from proxies at the same step: L(N) = a·N^b + c",
        description="Train (or reuse, under --out) the proxies of --widths, take each one's loss at --step, "
        "fit L(N) = a·N^b + c over their non-embedding parameter counts N, and predict the loss of "
        "--target-width (default: the run's hidden_size) at that step, with a leave-one-out band.",
        epilog=EPILOG_PREDICT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_args(p)
    p.add_argument("--widths", required=True, help="proxy hidden sizes, at least 3 (4+ for a band), e.g. 32,48,64,96")
    p.add_argument("--step", type=int, required=True, help="the step whose loss is fitted and predicted")
    p.add_argument("--target-width", type=int, default=None, help="width to predict (default: the run's hidden_size)")
    p.add_argument("--measure", action="store_true", help="also train the target and report the prediction's error")
    p.add_argument(
        "--seeds", default=None, help="init seeds (train.seed), e.g. 1,2,3: losses are averaged (default: the run's)"
    )
    p.add_argument("--out", default=None, help="proxies' directory (default <output_dir>/predict)")
    _loss_args(p)
    p.set_defaults(func=cmd_predict)
