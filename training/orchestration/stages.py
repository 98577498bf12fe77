"""Multi-stage growth runs: train a stage, grow its final checkpoint, train the next stage.

On one box ``run_stages`` does every transition inside one job: at a stage's end its final
checkpoint exists; the growth transform (``training.orchestration.grow.grow_checkpoint``, the same as ``flm
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
from typing import Optional

import torch.distributed as dist

from training import checkpoint
from training.checkpoint.lock import lock_if_rank0
from training.config import IQ_EVAL_RECORD
from training.config_base import to_dict
from training.data.build import run_sources
from training.engine.factory import make_trainer
from training.engine.parallel import init_process_group, teardown
from training.errors import FLMError
from training.model_size import flops_per_token, total_params
from training.orchestration import equivalent_step, transition
from training.orchestration.grow import grow_checkpoint
from training.orchestration.job_tracker import open_job_tracker
from training.orchestration.stage_plans import Stage, StagedRun
from training.orchestration.start import How, start

log = logging.getLogger(__name__)


def entered_stage(run: StagedRun, index: int) -> Stage:
    """Stage ``index`` with its LR-schedule entry resolved: under ``equivalent_step`` without
    ``growth.equivalent_tokens``, estimated from stage ``index - 1``'s curve (``training.orchestration.equivalent_step``,
    written once to the stage's directory). Reads the previous stages' files: call it once stage
    ``index - 1`` has trained."""
    stage = run.stages[index]
    if stage.schedule_entry != "estimated":
        return stage
    prev = entered_stage(run, index - 1)
    tokens = equivalent_step.entry_tokens(run.config, index, prev.config, stage.config.model, stage.dir)
    return stage if tokens is None else stage.entered_at(tokens)


def _agreed_stage(run: StagedRun, index: int) -> Stage:
    """``entered_stage`` computed on rank 0 (which writes its record) and broadcast, errors included, so
    every rank enters the schedule at the same step or every rank raises."""
    if run.stages[index].schedule_entry != "estimated":
        return run.stages[index]
    payload: list = [None, None]
    if dist.get_rank() == 0:
        try:
            payload = [entered_stage(run, index), None]
        except FLMError as err:
            payload = [None, str(err)]
    dist.broadcast_object_list(payload, src=0)
    if payload[1] is not None:
        raise equivalent_step.EquivalentStepError(payload[1])
    return payload[0]


def run_stages(
    run: StagedRun,
    *,
    resume: bool = False,
    only_stage: Optional[int] = None,
    init_from: Optional[str] = None,
) -> int:
    """Train the stages of ``run`` (all, or ``only_stage``) in this job; collective over all ranks.
    Nothing is evaluated in the job: a run with ``iq_eval`` records the section for ``flm eval``."""
    lock = lock_if_rank0(run.config.output_dir)
    try:
        return _run_stages(run, resume, only_stage, init_from)
    finally:
        if lock is not None:
            lock.release()


def _run_stages(run: StagedRun, resume: bool, only_stage: Optional[int], init_from: Optional[str]) -> int:
    init_process_group(run.config.timeout_minutes())
    rank0 = dist.get_rank() == 0
    if rank0 and run.config.iq_eval is not None:
        _record_iq_eval(run)
    indices = list(range(len(run.stages))) if only_stage is None else [only_stage]
    tracker = None
    try:
        run.check_layouts(dist.get_world_size(), indices)
        # one tracker run for the whole run (every stage, and every job of a run trained stage by stage)
        tracker = open_job_tracker(run.config, run.output_dir)
        for i in indices:
            stage = _agreed_stage(run, i)
            cfg = stage.config
            if stage.final_checkpoint is not None:
                if not resume:
                    raise checkpoint.CheckpointError(
                        f"stage {i} ({cfg.name}) already has its final checkpoint under {stage.checkpoint_root}; "
                        "pass --resume to continue the run, or choose a new output_dir"
                    )
                if rank0:
                    log.info("stage %d (%s) is complete", i, cfg.name)
                continue
            train_src, valid_src = run_sources(cfg)
            trainer = make_trainer(
                cfg,
                train_source=train_src,
                valid_source=valid_src,
                checkpoint_meta={"stage": i, "stage_name": run.config.stages[i].name},
            )
            started = time.time()
            how = How(
                resume=stage.checkpoint_root if resume else None,
                init_from=Path(init_from) if init_from and i == indices[0] else None,
                grown=(lambda i=i: grow_into(run, i)) if i > 0 and not (init_from and i == indices[0]) else None,
            )
            begun = start(trainer, how)
            if rank0:
                log.info("stage %d (%s): %s", i, cfg.name, begun.message)
            if begun.kind == "grown":
                check = _check_transition(run, stage, trainer, rank0)
                if tracker is not None:
                    tracker.event("growth", _growth_event(run, stage, check), tokens=_tokens(trainer))
            trainer.fit(tracker=tracker)
            if i + 1 < len(run.stages):  # what the next stage's grown model must compute, as this engine does
                transition.record_reference(trainer, stage.dir, rank0)
            wall_s = time.time() - started
            del trainer
            if rank0:
                _record_stage(run, stage, wall_s)
    finally:
        if tracker is not None:
            tracker.close()
        teardown()
    return 0


def _tokens(trainer) -> int:
    return trainer.consumed_samples * trainer.cfg.model.seq_length


def _growth_event(run: StagedRun, stage: Stage, check: Optional[dict]) -> dict:
    """The tracker event of the transition into ``stage``: which stage, the parameter counts and
    exactness of the growth (``growth.json``), the engine check's losses (``transition_check.json``;
    absent when there was no reference)."""
    event: dict = {"stage": stage.index, "stage_name": stage.name}
    grown = stage.dir / "growth.json"
    if grown.is_file():
        record = json.loads(grown.read_text())
        event.update({key: record[key] for key in ("old_params", "new_params", "exact", "preserved")})
    if check is not None:
        event.update({f"check_{key}": check[key] for key in ("old_loss", "new_loss", "rel_dloss", "preserved")})
    return event


def _check_transition(run: StagedRun, stage: Stage, trainer, rank0: bool) -> Optional[dict]:
    """The engine's check of the transition into ``stage`` (``training.orchestration.transition``);
    returns its record (None without a reference of the old model)."""
    reference = transition.read_reference(run.stages[stage.index - 1].dir)
    if reference is None:
        if rank0:
            log.info(
                "stage %d: no engine reference of stage %d's model; the float64 check stands",
                stage.index,
                stage.index - 1,
            )
        return None
    assert stage.growth is not None
    record = transition.check(trainer, reference, exact=stage.growth.exact, stage_dir=stage.dir, rank0=rank0)
    if rank0:
        log.info(
            "stage %d: the engine computes the old model's loss on the verification batch: %.6g under %s (%s) vs %.6g "
            "under %s (%s), relative difference %.1e (tolerance %g)",
            stage.index,
            record["new_loss"],
            record["new_layout"],
            record["new_precision"],
            record["old_loss"],
            record["old_layout"],
            record["old_precision"],
            record["rel_dloss"],
            record["tolerance"],
        )
    return record


def grow_into(run: StagedRun, index: int) -> Path:
    """The grown checkpoint that starts stage ``index`` (made from stage ``index-1``'s final one)."""
    stage, prev = run.stages[index], run.stages[index - 1]
    dst = stage.grown_dir
    if checkpoint.is_checkpoint(dst):
        return dst
    src = prev.final_checkpoint
    if src is None:
        raise checkpoint.CheckpointError(
            f"stage {index} starts from stage {index - 1}'s final checkpoint (step {prev.config.train.steps}) under "
            f"{prev.checkpoint_root}, which does not exist; train stage {index - 1} first"
        )
    assert stage.growth is not None  # every stage after the first has a plan
    report = grow_checkpoint(src, dst, stage.growth, run_verify=stage.reference_check)
    if dist.get_rank() == 0:
        log.info("%s", report.summary())
        with open(stage.dir / "growth.json", "w") as f:
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


def _record_iq_eval(run: StagedRun) -> None:
    """Write the run's ``iq_eval`` section where ``flm eval`` finds it; say in one line how to evaluate."""
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / IQ_EVAL_RECORD).write_text(json.dumps(to_dict(run.config.iq_eval)) + "\n")
    log.info(
        "iq_eval: the checkpoints are evaluated outside this job, each in a process of its own: "
        "flm eval %s --watch (or --final-only after the run)",
        out,
    )


def _record_stage(run: StagedRun, stage: Stage, wall_s: float) -> None:
    """Append the stage's summary to <output_dir>/stages.jsonl (what the dry-run report reads)."""
    out = run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    cfg = stage.config
    tokens = cfg.train.steps * cfg.train.global_batch_size * cfg.model.seq_length
    record = {
        "stage": stage.index,
        "name": run.config.stages[stage.index].name,
        "model": to_dict(cfg.model),
        "parallel": to_dict(cfg.parallel),
        "params": total_params(cfg.model),
        "steps": cfg.train.steps,
        "tokens": tokens,
        "flops": flops_per_token(cfg.model) * tokens,
        "wall_s": wall_s,
        "output_dir": cfg.output_dir,
    }
    with open(out / "stages.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
