"""``flm train``: config -> data sources -> Trainer -> fit, with resume and init-from."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from training.config import ModelConfig, RunConfig, load_run_config


def build_sources(cfg: RunConfig):
    """(train, validation) sample sources of the run's ``data:`` section."""
    if cfg.data.kind == "mock":
        from training.data.source import MockSource

        return (MockSource(cfg.model.vocab_size, cfg.model.seq_length, cfg.data.seed),
                MockSource(cfg.model.vocab_size, cfg.model.seq_length, cfg.data.seed + 1))
    from training.data.build import build_sources as build_real

    return build_real(cfg.data, seq_length=cfg.model.seq_length, vocab_size=cfg.model.vocab_size)


def check_same_model(ckpt_model: dict, model: ModelConfig, ckpt_path: Path) -> None:
    """A checkpoint loads only into the same model shape/variant; name the first field that differs."""
    from training.config_base import to_dict

    ours = to_dict(model)
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "kv_channels", "vocab_size", "make_vocab_size_divisible_by", "normalization", "activation",
                "tie_embeddings", "bias"):
        if ckpt_model.get(key) != ours.get(key):
            from training.checkpoint import CheckpointError

            raise CheckpointError(
                f"checkpoint {ckpt_path} has model.{key}={ckpt_model.get(key)!r} but the config says "
                f"{ours.get(key)!r}; use the checkpoint's model config (flm grow changes shapes)"
            )


def train_from_cli(args) -> int:
    from training import checkpoint
    from training.checkpoint import CheckpointError

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_run_config(args.config, overrides)
    try:
        if cfg.stages:
            from training.stages import run_stages

            if args.resume not in (None, "latest"):
                print("flm train: a staged run resumes from its own output_dir; use --resume without a path",
                      file=sys.stderr)
                return 2
            if args.stage is not None and not 0 <= args.stage < len(cfg.stages):
                print(f"flm train: --stage {args.stage} is out of range; the run has stages 0..{len(cfg.stages) - 1}",
                      file=sys.stderr)
                return 2
            return run_stages(cfg, resume=args.resume is not None, only_stage=args.stage, init_from=args.init_from)
        if args.stage is not None:
            print("flm train: --stage needs a run config with a stages: list", file=sys.stderr)
            return 2
        return run_training(cfg, resume=args.resume, init_from=args.init_from)
    except CheckpointError as err:
        print(f"flm train: {err}", file=sys.stderr)
        return 2


def run_training(cfg: RunConfig, *, resume: Optional[str] = None, init_from: Optional[str] = None) -> int:
    from training import checkpoint
    from training.parallel import teardown
    from training.trainer_base import make_trainer

    train_src, valid_src = build_sources(cfg)
    trainer = make_trainer(cfg, train_source=train_src, valid_source=valid_src)
    log = trainer.layout.rank == 0
    try:
        source = None
        if resume is not None:
            source = checkpoint.latest_in(trainer.checkpoint_root()) if resume == "latest" else checkpoint.resolve(resume)
            if source is None and log:
                print(f"flm train: no checkpoint under {trainer.checkpoint_root()}; starting fresh", file=sys.stderr)
        if source is not None:
            check_same_model(checkpoint.read_meta(source)["config"]["model"], cfg.model, source)
            trainer.load(source)
            if log:
                print(f"flm train: resumed from {source} at step {trainer.step_count}", file=sys.stderr)
        elif init_from is not None:
            path = checkpoint.resolve(init_from)
            check_same_model(checkpoint.read_meta(path)["config"]["model"], cfg.model, path)
            trainer.init_from(path)
            if log:
                print(f"flm train: initialised weights from {path}", file=sys.stderr)
        trainer.fit()
        if log:
            print(f"flm train: done at step {trainer.step_count}; metrics in {trainer.output_dir / 'metrics.jsonl'}, "
                  f"checkpoints in {trainer.checkpoint_root()}", file=sys.stderr)
    finally:
        teardown()
    return 0
