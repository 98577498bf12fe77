"""Multi-stage growth runs: train a stage, grow its final checkpoint, train the next stage.

On one box ``run_stages`` does every transition inside one job: at a stage's end its final
checkpoint exists; the growth transform (``training.grow.grow_checkpoint``, the same as ``flm
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
import logging
import time
from pathlib import Path
from typing import Optional, Protocol

import torch.distributed as dist

from training import checkpoint, equivalent_step
from training.checkpoint.lock import lock_if_rank0
from training.config import RunConfig, check_layouts, stage_config
from training.config_base import to_dict
from training.data.build import run_sources
from training.engine.factory import make_trainer
from training.engine.parallel import init_process_group, teardown
from training.errors import FLMError
from training.grow import grow_checkpoint
from training.model_check import check_same_model
from training.model_size import flops_per_token, total_params
from training.stage_plans import growth_plan, stage_model, validate_stages

log = logging.getLogger(__name__)

GROWN_DIR = "grown"


#: called on rank 0 after each stage, with the whole run, the stage's index, its config and its final
#: checkpoint, while the other ranks wait; returns fields for the stage's ``stages.jsonl`` record
#: (the IQ benchmark per stage, ``eval_iq.stage_eval.stage_end_iq``, is wired in by ``flm``'s CLI:
#: the benchmark is a layer above this one)
class StageEndHook(Protocol):
    def check(self, run: RunConfig) -> None:
        """Refuse (ConfigError) what the hook cannot do for ``run``, before anything trains."""

    def __call__(
        self, run: RunConfig, index: int, cfg: RunConfig, final_checkpoint: Optional[Path]
    ) -> Optional[dict]: ...


def trained_stage_config(run: RunConfig, index: int, entry: Optional[int] = None) -> RunConfig:
    """Stage ``index``'s single-stage config with the model it trains (``stage_plans.stage_model``:
    the grown model, derived fields included), not its ``model:`` section as written; ``entry``: its
    estimated equivalent-step entry (``stage_entry``)."""
    return dataclasses.replace(stage_config(run, index, entry_tokens=entry), model=stage_model(run, index))


def stage_entry(run: RunConfig, index: int) -> Optional[int]:
    """Stage ``index``'s equivalent-step entry estimated from stage ``index - 1``'s curve
    (``training.equivalent_step``; None where the schedule takes none). Reads the previous stages'
    files: call it once stage ``index - 1`` has trained."""
    if index == 0:
        return None
    prev = trained_stage_config(run, index - 1, stage_entry(run, index - 1))
    return equivalent_step.entry_tokens(run, index, prev, stage_model(run, index), stage_dir(run, index))


def _agreed_entry(run: RunConfig, index: int) -> Optional[int]:
    """``stage_entry`` computed on rank 0 (which writes its record) and broadcast, errors included, so
    every rank enters the schedule at the same step or every rank raises."""
    payload: list = [None, None]
    if dist.get_rank() == 0:
        try:
            payload = [stage_entry(run, index), None]
        except FLMError as err:
            payload = [None, str(err)]
    dist.broadcast_object_list(payload, src=0)
    if payload[1] is not None:
        raise equivalent_step.EquivalentStepError(payload[1])
    return payload[0]


def stage_dir(run: RunConfig, index: int) -> Path:
    return Path(stage_config(run, index).output_dir)


def _final_checkpoint(cfg: RunConfig) -> Optional[Path]:
    path = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(cfg.output_dir) / "checkpoints"
    final = path / checkpoint.step_dir_name(cfg.train.steps)
    return final if checkpoint.is_checkpoint(final) else None


def run_stages(
    run: RunConfig,
    *,
    resume: bool = False,
    only_stage: Optional[int] = None,
    init_from: Optional[str] = None,
    stage_end: Optional[StageEndHook] = None,
) -> int:
    """Train the stages of ``run`` (all, or ``only_stage``) in this job; collective over all ranks.
    ``stage_end`` (rank 0, after each stage) adds fields to the stage's record."""
    validate_stages(run)
    if stage_end is not None:
        stage_end.check(run)
    lock = lock_if_rank0(run.output_dir)
    try:
        return _run_stages(run, resume, only_stage, init_from, stage_end)
    finally:
        if lock is not None:
            lock.release()


def _run_stages(
    run: RunConfig, resume: bool, only_stage: Optional[int], init_from: Optional[str], stage_end: Optional[StageEndHook]
) -> int:
    init_process_group()
    rank0 = dist.get_rank() == 0
    indices = list(range(len(run.stages))) if only_stage is None else [only_stage]
    try:
        check_layouts(run, dist.get_world_size(), indices)
        for i in indices:
            cfg = trained_stage_config(run, i, _agreed_entry(run, i))
            if _final_checkpoint(cfg) is not None:
                if not resume:
                    raise checkpoint.CheckpointError(
                        f"stage {i} ({cfg.name}) already has its final checkpoint under {cfg.output_dir}; "
                        "pass --resume to continue the run, or choose a new output_dir"
                    )
                if rank0:
                    log.info("stage %d (%s) is complete", i, cfg.name)
                continue
            train_src, valid_src = run_sources(cfg)
            trainer = make_trainer(cfg, train_source=train_src, valid_source=valid_src)
            trainer.extra_meta = {"stage": i, "stage_name": run.stages[i].name}
            started = time.time()
            check_hash = cfg.checkpoint.verify_hash
            latest = (
                checkpoint.resume_verified(trainer.checkpoint_root(), trainer.load, check_hash=check_hash)
                if resume
                else None
            )
            if latest is not None:
                what = f"resumed from {latest} at step {trainer.step_count}"
            elif init_from and i == indices[0]:
                checkpoint.load_verified(checkpoint.resolve(init_from), trainer.init_from, check_hash=check_hash)
                what = f"started from {init_from}"
            elif i > 0:
                source = grow_into(run, i)
                check_same_model(checkpoint.read_meta(source)["config"]["model"], cfg.model, source)
                checkpoint.load_verified(source, trainer.init_from, check_hash=check_hash)
                what = f"started from the grown checkpoint {source}"
            else:
                what = "started from scratch"
            if rank0:
                log.info("stage %d (%s): %s", i, cfg.name, what)
            trainer.fit()
            wall_s = time.time() - started
            del trainer
            if rank0:
                extra = stage_end(run, i, cfg, _final_checkpoint(cfg)) if stage_end is not None else None
                _record_stage(run, i, cfg, wall_s, extra)
    finally:
        teardown()
    return 0


def grow_into(run: RunConfig, index: int) -> Path:
    """The grown checkpoint that starts stage ``index`` (made from stage ``index-1``'s final one)."""
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
        log.info("%s", report.summary())
        with open(stage_dir(run, index) / "growth.json", "w") as f:
            json.dump(
                {
                    "stage": index,
                    "src": str(src),
                    "dst": str(dst),
                    "exact": report.exact,
                    "preserved": report.preserved,
                    "old_params": report.old_params,
                    "new_params": report.new_params,
                    "verify": dataclasses.asdict(report.verify) if report.verify else None,
                },
                f,
                indent=2,
            )
    return dst


def _record_stage(run: RunConfig, index: int, cfg: RunConfig, wall_s: float, extra: Optional[dict] = None) -> None:
    """Append the stage's summary to <output_dir>/stages.jsonl (what the dry-run report reads)."""
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokens = cfg.train.steps * cfg.train.global_batch_size * cfg.model.seq_length
    record = {
        "stage": index,
        "name": run.stages[index].name,
        "model": to_dict(cfg.model),
        "parallel": to_dict(cfg.parallel),
        "params": total_params(cfg.model),
        "steps": cfg.train.steps,
        "tokens": tokens,
        "flops": flops_per_token(cfg.model) * tokens,
        "wall_s": wall_s,
        "output_dir": cfg.output_dir,
    }
    record.update(extra or {})
    with open(out / "stages.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
