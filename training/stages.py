"""Multi-stage growth runs: train a stage, grow its final checkpoint, train the next stage.

On one box ``run_stages`` does every transition inside one job: at a stage's end its final
checkpoint exists; the growth transform (``growth.checkpoint.grow_checkpoint``, the same as ``flm
grow``) writes ``<output_dir>/stage<i>-<name>/grown`` with the verification of the exactness; the
next stage's ``Trainer`` is built under the next layout and started from it (weights, Adam moments,
masks, data position). On a cluster each stage can be its own job (``flm train RUN --stage N``).

Resume (``--resume``) finds where the run stands from what is on disk, so a run killed anywhere
resumes to the same losses: a stage with a final checkpoint is done; a stage with an earlier
checkpoint resumes from it (masks included, also inside a ramp); a stage with a grown checkpoint
but no checkpoint of its own starts from the grown one again.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional

from training.config import RunConfig, stage_config
from training.config_base import ConfigError, to_dict

GROWN_DIR = "grown"


def growth_plan(run: RunConfig, index: int, path: str = ""):
    """The ``GrowthPlan`` that turns stage ``index - 1``'s model into stage ``index``'s."""
    from growth.plan import check_plan, plan_for

    prev, stage = run.stages[index - 1], run.stages[index]
    g = stage.growth
    where = f"{path}.stages[{index}].growth" if path else f"stages[{index}].growth"
    changed = {
        "hidden": prev.model.hidden_size != stage.model.hidden_size,
        "ffn": prev.model.ffn_hidden_size != stage.model.ffn_hidden_size,
        "heads": (prev.model.num_attention_heads, prev.model.query_groups)
                 != (stage.model.num_attention_heads, stage.model.query_groups),
        "depth": prev.model.num_layers != stage.model.num_layers,
    }
    operators = {dim: g.operators.get(dim, g.default_operator if moved else "none") for dim, moved in changed.items()}
    if operators["depth"] == "clone":
        operators["depth"] = "msg"
    try:
        plan = plan_for(
            prev.model, stage.model, operators, tp=stage.parallel.tp,
            old_vocab=prev.model.padded_vocab_size(prev.parallel.tp),
            depth={"placement": g.depth_placement, "init": g.depth_init},
            ramp={"steps": g.ramp_steps, "shape": g.ramp_shape},
            init_std=g.init_std, clone_noise=g.clone_noise, seed=g.seed, exact=g.exact,
        )
        check_plan(plan, prev.model, where)
    except ConfigError as err:
        key = err.key if err.key.startswith(where) else f"{where}.{err.key}"
        raise ConfigError(key, err.message) from None
    return plan


def validate_stages(run: RunConfig) -> None:
    """Every transition must be a valid growth (no shrinking, exactness as requested, TP fits)."""
    for i in range(1, len(run.stages)):
        growth_plan(run, i)


def stage_dir(run: RunConfig, index: int) -> Path:
    return Path(stage_config(run, index).output_dir)


def _final_checkpoint(cfg: RunConfig) -> Optional[Path]:
    from training import checkpoint

    path = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.output_dir) / "checkpoints"
    final = path / checkpoint.step_dir_name(cfg.train.steps)
    return final if checkpoint.is_checkpoint(final) else None


def run_stages(run: RunConfig, *, resume: bool = False, only_stage: Optional[int] = None,
               init_from: Optional[str] = None) -> int:
    """Train the stages of ``run`` (all, or ``only_stage``) in this job; collective over all ranks."""
    import torch.distributed as dist

    from training import checkpoint
    from training.parallel import init_process_group, teardown
    from training.run import build_sources
    from training.trainer_base import make_trainer

    validate_stages(run)
    init_process_group()
    rank0 = dist.get_rank() == 0
    indices = range(len(run.stages)) if only_stage is None else [only_stage]
    try:
        for i in indices:
            cfg = stage_config(run, i)
            cfg.parallel.data_parallel_size(dist.get_world_size())
            if _final_checkpoint(cfg) is not None:
                if not resume:
                    raise checkpoint.CheckpointError(
                        f"stage {i} ({cfg.name}) already has its final checkpoint under {cfg.output_dir}; "
                        "pass --resume to continue the run, or choose a new output_dir"
                    )
                if rank0:
                    print(f"flm train: stage {i} ({cfg.name}) is complete", file=sys.stderr)
                continue
            train_src, valid_src = build_sources(cfg)
            trainer = make_trainer(cfg, train_source=train_src, valid_source=valid_src)
            trainer.extra_meta = {"stage": i, "stage_name": run.stages[i].name}
            started = time.time()
            latest = checkpoint.latest_in(trainer.checkpoint_root()) if resume else None
            if latest is not None:
                trainer.load(latest)
                what = f"resumed from {latest} at step {trainer.step_count}"
            elif init_from and i == indices[0]:
                trainer.init_from(Path(init_from))
                what = f"started from {init_from}"
            elif i > 0:
                source = grow_into(run, i)
                trainer.init_from(source)
                what = f"started from the grown checkpoint {source}"
            else:
                what = "started from scratch"
            if rank0:
                print(f"flm train: stage {i} ({cfg.name}): {what}", file=sys.stderr)
            trainer.fit()
            wall_s = time.time() - started
            del trainer
            if rank0:
                _record_stage(run, i, cfg, None, wall_s, iq=_stage_iq(run, cfg))
    finally:
        teardown()
    return 0


def grow_into(run: RunConfig, index: int) -> Path:
    """The grown checkpoint that starts stage ``index`` (made from stage ``index-1``'s final one)."""
    import torch.distributed as dist

    from growth.checkpoint import grow_checkpoint
    from training import checkpoint

    dst = stage_dir(run, index) / GROWN_DIR
    if checkpoint.is_checkpoint(dst):
        return dst
    prev = stage_config(run, index - 1)
    src = _final_checkpoint(prev)
    if src is None:
        raise checkpoint.CheckpointError(
            f"stage {index} starts from stage {index - 1}'s final checkpoint (step {prev.train.steps}) under "
            f"{prev.output_dir}/checkpoints, which does not exist; train stage {index - 1} first"
        )
    report = grow_checkpoint(src, dst, growth_plan(run, index))
    if dist.get_rank() == 0:
        print(report.summary(), file=sys.stderr)
        with open(stage_dir(run, index) / "growth.json", "w") as f:
            json.dump({"stage": index, "src": str(src), "dst": str(dst), "exact": report.exact,
                       "preserved": report.preserved, "old_params": report.old_params,
                       "new_params": report.new_params,
                       "verify": dataclasses.asdict(report.verify) if report.verify else None}, f, indent=2)
    return dst


def _stage_iq(run: RunConfig, cfg: RunConfig) -> Optional[dict]:
    """The IQ benchmark on the stage's final checkpoint when ``iq_eval`` is set (never raises)."""
    if run.iq_eval is None:
        return None
    from eval_iq.stage_eval import evaluate_stage

    q = run.iq_eval
    return evaluate_stage(_final_checkpoint(cfg), Path(cfg.output_dir) / "iq", tasks=q.tasks, limit=q.limit,
                          data_dir=q.data_dir)


def _record_stage(run: RunConfig, index: int, cfg: RunConfig, trainer, wall_s: float, iq: Optional[dict] = None) -> None:
    """Append the stage's summary to <output_dir>/stages.jsonl (what the dry-run report reads)."""
    from training.metrics import flops_per_token, total_params

    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = cfg.train.steps * cfg.train.global_batch_size * cfg.model.seq_length
    record = {
        "stage": index, "name": run.stages[index].name, "model": to_dict(cfg.model), "parallel": to_dict(cfg.parallel),
        "params": total_params(cfg.model), "steps": cfg.train.steps, "tokens": tokens,
        "flops": flops_per_token(cfg.model) * tokens, "wall_s": wall_s, "output_dir": cfg.output_dir,
    }
    if iq is not None:
        record["iq"] = iq
    with open(out / "stages.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
