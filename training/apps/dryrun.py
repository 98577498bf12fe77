"""``flm dryrun``: the one-box growth dry run and its report.

Trains ``configs/runs/dryrun.yaml`` (three stages on two gloo processes, DP2 -> TP2 -> PP2, MSG
growth of width and depth, embedded default corpus), then writes ``<output_dir>/report/``:

- ``loss_vs_tokens.png``: train and validation loss against tokens seen, growth marked, and below
  it the learning rate every step used (the run's ``lr_schedule``);
- ``stages.md``: per stage: shape, parameters, tokens, wall time, FLOPs, exactness at entry;
- ``metrics.jsonl``: every stage's metrics in one file, with the stage index;
- the stages' TensorBoard directories and the final checkpoint are listed in ``stages.md``;
- ``iq/``: the IQ benchmark on the final model (a small subset), when the checkpoint has a tokenizer;
- ``stages.md`` also shows the IQ scores of each stage's final checkpoint when the run has ``iq_eval``:
  evaluated after training by the same path as a live run's (``flm eval --final-only``, one process
  per checkpoint; ``eval_iq.watch``).

Re-running resumes: a finished run only regenerates the report.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from eval_iq.stage_eval import stages_markdown
from training.config import CONFIGS_DIR, RunConfig
from training.local_launch import torchrun_command

if TYPE_CHECKING:  # startup time: growth/ (torch) loads when a command runs, not for `flm --help`
    from training.orchestration.stage_plans import StagedRun

log = logging.getLogger(__name__)

DEFAULT_RUN = CONFIGS_DIR / "runs" / "dryrun.yaml"
IQ_SUBTASKS = "counting,head_tail,multi_key_retrieval,single_supporting_fact"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "dryrun",
        help="the small-scale growth dry run (3 stages, 2 processes) and its report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=str(DEFAULT_RUN), help="staged run config (default: %(default)s)")
    p.add_argument("--output-dir", default=None, help="where the run and its report go (default: the config's)")
    p.add_argument("--nproc", type=int, default=2, help="processes (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="delete a previous dry run in the output dir first")
    p.add_argument(
        "--skip-iq", action="store_true", help="do not run the IQ benchmark (neither per stage nor on the final model)"
    )
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.skip_iq:
        overrides.append("iq_eval=null")
    from training.orchestration.stage_plans import load_run  # startup time: growth/ (torch) loads when the command runs

    staged = load_run(args.config, overrides)
    cfg = staged.config
    out = Path(cfg.output_dir)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    cmd = torchrun_command(args.nproc, ["train", args.config, "--resume", *overrides])
    log.info("+ %s", " ".join(cmd))
    code = subprocess.call(cmd, env=dict(os.environ, PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore")))
    if code != 0:
        log.error("training failed (exit %d); fix the error above and re-run to resume", code)
        return code
    if cfg.iq_eval is not None:
        stage_iq(staged)
    report = write_report(staged)
    iq = run_iq(staged, report) if not args.skip_iq else None
    print(
        f"\nflm dryrun: report in {report}/\n  {report / 'stages.md'}\n  {report / 'loss_vs_tokens.png'}\n"
        f"  {report / 'metrics.jsonl'}\n  TensorBoard: {cfg.output_dir}/stage*/tensorboard\n"
        + (f"  IQ benchmark: {report / 'iq' / 'report.md'}\n" if iq == 0 else "")
        + f"  final checkpoint: {staged.stages[-1].checkpoint_root}"
    )
    return 0


def _last_val_loss(records: list[dict]) -> float:
    """The stage's last validation loss (a training batch's loss is one noisy sample)."""
    return next((r["val_loss"] for r in reversed(records) if r.get("val_loss") is not None), float("nan"))


def stage_iq(run: StagedRun) -> int:
    """Each stage's final checkpoint evaluated the way a live run's are: ``flm eval --final-only``
    (``eval_iq.watch``, one process per checkpoint, scores in ``<stage dir>/eval.jsonl``)."""
    from eval_iq.watch import EvalOptions, evaluate_pending  # startup time: loaded when the dry run evaluates

    roots = [Path(run.config.checkpoint.dir)] if run.config.checkpoint.dir else []
    options = EvalOptions.for_run(run.output_dir, None, None, None, timeout=3600.0)
    return evaluate_pending(run.output_dir, options, roots, final_only=True)


def _stage_iq_record(stage_dir: Path) -> dict | None:
    """The stage's final IQ record for the report: its scores, or why it has none."""
    from eval_iq.watch import final_record  # startup time: loaded when the report is written

    record = final_record(stage_dir)
    if record is None:
        return None
    return record.get("iq") or {"error": record.get("skipped", "not evaluated")}


def _stage_records(cfg: RunConfig) -> list[dict]:
    records: dict[int, dict] = {}
    path = Path(cfg.output_dir) / "stages.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            records[rec["stage"]] = rec  # the last record of a stage wins (a resumed stage appends again)
    return [records[i] for i in sorted(records)]


def write_report(run: StagedRun) -> Path:
    """Write ``<output_dir>/report/`` of the staged run ``run`` from what its stages wrote; returns its path."""
    # startup time: matplotlib loads for the report only, not when `flm` builds its parser
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg")

    cfg = run.config
    report = run.output_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    merged, boundaries, rows = [], [], []
    stage_info = {r["stage"]: r for r in _stage_records(cfg)}
    for i, stage in enumerate(run.stages):
        scfg = stage.config
        metrics_path = stage.dir / "metrics.jsonl"
        records = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
        for r in records:
            merged.append(dict(r, stage=i))
        if records and i > 0:
            boundaries.append(records[0]["tokens"] - scfg.train.global_batch_size * scfg.model.seq_length)
        growth = stage.dir / "growth.json"
        entry = "trained from scratch"
        if growth.exists():
            g = json.loads(growth.read_text())
            v = g.get("verify") or {}
            entry = (
                f"{'exact' if g['preserved'] else 'NOT preserved'}: max abs Δlogit {v.get('max_abs_dlogit', float('nan')):.1e}, "
                f"abs Δloss {v.get('abs_dloss', float('nan')):.1e}"
            )
        check = stage.dir / "transition_check.json"
        if check.exists():
            c = json.loads(check.read_text())
            entry += f"; engine ({c['old_layout']} -> {c['new_layout']}, {c['new_precision']}): rel Δloss {c['rel_dloss']:.1e}"
        info = stage_info.get(i, {})
        m = scfg.model
        rows.append(
            f"| {i} | {cfg.stages[i].name} | TP{scfg.parallel.tp} PP{scfg.parallel.pp} | {m.num_layers} x {m.hidden_size}, "
            f"FFN {m.ffn_hidden_size}, {m.num_attention_heads} heads | {info.get('params', 0):,} | "
            f"{info.get('tokens', 0):,} | {info.get('wall_s', float('nan')):.0f} s | {info.get('flops', 0):.2e} | "
            f"{entry} | {_last_val_loss(records):.3f} |"
        )
    with open(report / "metrics.jsonl", "w") as f:
        for r in merged:
            f.write(json.dumps(r) + "\n")
    lines = [
        f"# Dry run `{cfg.name}`",
        "",
        "| stage | name | layout | shape | params | tokens | wall time | FLOPs | exactness at entry | last val loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "FLOPs: 6 x matmul parameters + attention, per token, times tokens (training/engine/metrics.py). "
        "Last val loss: the stage's last validation loss (the same held-out batches for every stage).",
        "",
        "TensorBoard: " + ", ".join(f"`{stage.dir}/tensorboard`" for stage in run.stages),
        "",
        f"Final checkpoint: `{run.stages[-1].checkpoint_root}`",
        "",
    ]

    iq = stages_markdown([(f"{s.index} {cfg.stages[s.index].name}", _stage_iq_record(s.dir)) for s in run.stages])
    if iq:
        lines += ["## IQ benchmark at the end of each stage", "", iq]
    (report / "stages.md").write_text("\n".join(lines))

    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    for i in range(len(cfg.stages)):
        lr = [(r["tokens"], r["lr"]) for r in merged if r["stage"] == i and r.get("lr") is not None]
        if lr:  # the LR each step actually used (metrics.jsonl), so the schedule across stages is visible
            ax_lr.plot(*zip(*lr), lw=1, label=f"stage {i}")
        pts = [(r["tokens"], r["loss"]) for r in merged if r["stage"] == i]
        val = [(r["tokens"], r["val_loss"]) for r in merged if r["stage"] == i and r.get("val_loss") is not None]
        if pts:
            ax.plot(*zip(*pts), lw=1, alpha=0.8, label=f"stage {i} ({cfg.stages[i].name}) train")
        if val:
            ax.plot(*zip(*val), "o-", ms=3, label=f"stage {i} validation")
    for j, x in enumerate(boundaries):
        ax.axvline(x, color="k", ls="--", lw=0.8, label="growth" if j == 0 else None)
    for x in boundaries:
        ax_lr.axvline(x, color="k", ls="--", lw=0.8)
    ax_lr.set_xlabel("tokens")
    ax_lr.set_ylabel(f"LR ({cfg.lr_schedule.kind})", fontsize=8)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{cfg.name}: loss vs tokens with growth transitions")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(report / "loss_vs_tokens.png", dpi=120)
    plt.close(fig)
    return report


def run_iq(run: StagedRun, report: Path) -> int:
    """A small IQ benchmark run on the final model (``flm iq`` in a process of its own; needs a
    tokenizer); returns its exit status."""
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "iq",
        "--model",
        "flm",
        "--checkpoint",
        str(run.stages[-1].checkpoint_root),
        "--subtasks",
        IQ_SUBTASKS,
        "--limit",
        "20",
        "--output-dir",
        str(report / "iq"),
    ]
    log.info("+ %s", " ".join(cmd))
    code = subprocess.call(cmd)
    if code != 0:
        log.error("the IQ benchmark failed (exit %d); the training report is complete", code)
    return code
