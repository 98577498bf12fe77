"""What every training engine shares: data order, validation, growth masks, checkpoint metadata,
and the ``fit`` loop over the collaborators of ``training.engine.loop``.

An engine (``training.engine.trainer.Trainer`` for megatron-core, ``training.engine.ds_trainer.DeepSpeedTrainer``
for DeepSpeed ZeRO) subclasses :class:`BaseTrainer` and implements the collective operations
``step``, ``save``, ``load``, ``init_from``, the forward-only loss ``_forward_only_loss`` and
``_set_train_mode``; it exposes the modules that carry growth masks as ``mask_chunks``; its ``step``
asks ``_skip_non_finite`` before the update and calls ``_after_optimizer_step`` after it. Everything
the user sees besides the numbers — which samples a step trains on, the metrics records,
validation, checkpoint cadence, divergence policy, fault injection, preemption, mask ramps — lives
here and in ``training.engine.loop``, so the engines cannot drift apart.

Data: for optimizer step ``n`` the global batch is the samples ``consumed .. consumed +
global_batch_size - 1`` of the train source; DP rank ``r`` takes the ``r``-th contiguous slice and
splits it into micro-batches. The order depends only on the global index, so a resumed run (also
with another DP size or engine) sees the same batches. A blend of datasets (``PositionedSource``)
also depends on its ``DataPosition``: checkpoints record it (``data_position``) and a resumed or
grown start enters it (``training.data.position``: a stage that changes the blend continues each
dataset where it stopped). Under ``data.reset_at_eos`` each micro-batch carries per-document
position ids and an attention mask (``training.engine.model.documents``).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from growth.masks import MaskState
from training.config import RunConfig, run_config_to_dict
from training.data.position import DataPosition
from training.data.source import PositionedSource, SampleSource
from training.engine.fusions import decide
from training.engine.loop import faults
from training.engine.loop.checkpointer import Checkpointer
from training.engine.loop.divergence import DivergenceError, DivergenceGuard, NonFiniteLossError
from training.engine.loop.meter import StepMeter
from training.engine.loop.preemption import Preemption
from training.engine.loop.profiler import StepProfiler
from training.engine.loop.step_result import StepResult
from training.engine.metrics import MetricsSink
from training.engine.model.build import transformer_config
from training.engine.model.documents import document_inputs
from training.engine.model.masks import apply_masks, clear_masks
from training.engine.parallel import Layout, process_device, setup_layout
from training.engine.tracking import Tracker
from training.errors import DataError

log = logging.getLogger(__name__)


#: the engines' errors and step result, imported from here by callers
__all__ = ["BaseTrainer", "DivergenceError", "NonFiniteLossError", "StepResult", "token_mean_loss", "use_bf16"]


def use_bf16(precision: str) -> bool:
    if precision == "auto":
        return torch.cuda.is_available()
    return precision == "bf16"


def token_mean_loss(loss_mask: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Mean per-token loss of a micro-batch (``output``: the model's per-token losses)."""
    return (output.float() * loss_mask).sum() / loss_mask.sum()


class BaseTrainer(ABC):
    """One model shape under one layout; every rank constructs it alike and calls it collectively."""

    #: the ``engine`` value of the run config this class implements (recorded in checkpoints)
    engine = "megatron"
    #: megatron's ``OptimizerParamScheduler``, set by the engine (a rollback scales its LRs)
    scheduler: Any

    def __init__(
        self,
        cfg: RunConfig,
        *,
        train_source: SampleSource,
        valid_source: Optional[SampleSource] = None,
        output_dir: Optional[Path] = None,
        checkpoint_meta: Optional[dict[str, Any]] = None,
    ):
        """``checkpoint_meta``: extra fields recorded in every checkpoint's ``flm_checkpoint.json``
        (``flm train`` records the stage of a staged run)."""
        self.cfg = cfg
        self.layout: Layout = setup_layout(cfg.parallel, cfg.train.seed)
        self.bf16 = use_bf16(cfg.train.precision)
        self.num_microbatches = cfg.train.micro_batches(self.layout.dp)
        self.train_source = train_source
        self.valid_source = valid_source
        #: the end-of-document id the micro-batches reset at (data.reset_at_eos), else None
        self.eos_id = self._document_eos(cfg, train_source)
        self.output_dir = Path(output_dir or cfg.output_dir)
        self.step_count = 0
        self.consumed_samples = 0
        #: optimizer updates applied (Adam's step for bias correction); differs from step_count
        #: when steps were skipped or the run started from a grown checkpoint with carried moments
        self.adam_step = 0
        #: MSG growth masks while they ramp (None: plain model); advanced after each optimizer step
        self.masks = None
        self._extra_meta = dict(checkpoint_meta or {})
        # the collaborators of fit (training.engine.loop)
        self.meter = StepMeter(cfg, self.layout.world_size)
        self.guard = DivergenceGuard(cfg.divergence, on_nan=cfg.train.on_nan, rank=self.layout.rank)
        self.checkpointer = Checkpointer(cfg.checkpoint, self.output_dir)
        self.preemption = Preemption()
        self.profiler = StepProfiler(
            cfg.logging.profile, self.output_dir, rank=self.layout.rank, world_size=self.layout.world_size
        )

    # ---------------------------------------------------------------- engine interface
    @property
    @abstractmethod
    def mask_chunks(self) -> list[torch.nn.Module]:
        """The model modules growth masks are applied to (the layer spec's modules are inside)."""

    @abstractmethod
    def step(self) -> StepResult:
        """One optimizer step on the next global batch (collective)."""

    @abstractmethod
    def save(self, root: Optional[Path] = None) -> Path:
        """Save a resumable checkpoint of this engine under ``root`` (default: the run's); collective."""

    @abstractmethod
    def load(self, path: Path) -> dict[str, Any]:
        """Resume from a checkpoint this engine saved (any layout); returns its metadata."""

    @abstractmethod
    def init_from(self, path: Path, *, moments: Optional[bool] = None) -> dict[str, Any]:
        """Start at step 0 from the weights of any project checkpoint (moments: see ``_carry_moments``)."""

    @abstractmethod
    def _forward_only_loss(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """Global-batch mean loss without gradients (same value on every rank)."""

    @abstractmethod
    def _set_train_mode(self, train: bool) -> None:
        """Switch the model between training and evaluation mode (dropout)."""

    # ---------------------------------------------------------------- data
    @staticmethod
    def _document_eos(cfg: RunConfig, source: SampleSource) -> Optional[int]:
        if not cfg.data.reset_at_eos:
            return None
        eos = getattr(source, "eos_id", None)
        if eos is None:
            raise DataError(
                f"data.reset_at_eos: the training data ({type(source).__name__}) has no end-of-document id; "
                "use kind default or prepared, or set data.reset_at_eos false"
            )
        return int(eos)

    def _enter_data(self, meta: dict[str, Any]) -> None:
        """Continue the data position recorded in ``meta`` at ``consumed_samples`` (a blend source;
        a checkpoint without one read its blend from origin 0)."""
        if isinstance(self.train_source, PositionedSource):
            saved = meta.get("data_position")
            self.train_source.enter(None if saved is None else DataPosition.from_dict(saved), self.consumed_samples)

    def _rank_batch(self, source: SampleSource, start: int) -> np.ndarray:
        gbs = self.cfg.train.global_batch_size
        per_rank = gbs // self.layout.dp
        first = start + self.layout.dp_rank * per_rank
        return np.stack([source.sample(i) for i in range(first, first + per_rank)])

    def _micro_batches(self, samples: np.ndarray) -> list[dict[str, torch.Tensor]]:
        mbs = self.cfg.train.micro_batch_size
        device = process_device()
        out = []
        for i in range(0, samples.shape[0], mbs):
            chunk = torch.from_numpy(samples[i : i + mbs]).to(device)
            tokens, labels = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            if self.eos_id is None:
                positions, mask = torch.arange(tokens.shape[1], device=device).expand_as(tokens), None
            else:
                positions, mask = document_inputs(tokens, self.eos_id)
            out.append(
                {
                    "tokens": tokens,
                    "labels": labels,
                    "position_ids": positions,
                    "attention_mask": mask,
                    "loss_mask": torch.ones_like(labels, dtype=torch.float32),
                }
            )
        return out

    def _skip_non_finite(self, loss: float, step: int) -> bool:
        """The NaN and spike policy for the global-batch loss (the same value on every rank, so
        every rank decides alike; ``FLM_FAULT_LOSS`` applied first): True when the step's update must
        be skipped; raises ``NonFiniteLossError`` under ``train.on_nan=raise``
        (``training.engine.loop.divergence``)."""
        batch = self.consumed_samples // self.cfg.train.global_batch_size + 1
        loss = faults.injected_loss(self.cfg.name, batch, loss)
        return self.guard.check(loss, step, self.consumed_samples)

    def evaluate(self, batches: Optional[int] = None) -> float:
        """Mean validation loss over the first ``batches`` global batches of the validation source."""
        return self.loss_on(self.valid_source or self.train_source, batches or self.cfg.train.eval_batches)

    @torch.no_grad()
    def loss_on(self, source: SampleSource, batches: int) -> float:
        """Mean loss over the first ``batches`` global batches of ``source``, without gradients, in
        evaluation mode (collective; the same value on every rank, whatever the layout)."""
        n = batches
        self._set_train_mode(False)
        total = 0.0
        for b in range(n):
            total += self._forward_only_loss(
                self._micro_batches(self._rank_batch(source, b * self.cfg.train.global_batch_size))
            )
        self._set_train_mode(True)
        return total / n

    # ---------------------------------------------------------------- growth masks
    def _set_masks(self, state) -> None:
        """Apply MSG masks at their ramp position; once the ramp is done they are removed."""

        self.masks = state if state is not None and apply_masks(self.mask_chunks, state) else None
        if state is not None and self.masks is None and self.layout.rank == 0:
            log.info("growth masks reached 1 and were removed; the model is plain again")

    @property
    def mask_value(self) -> Optional[float]:
        return None if self.masks is None else self.masks.value()

    def _restore_masks(self, data) -> None:

        if data:
            self._set_masks(MaskState.from_dict(data))
        else:
            clear_masks(self.mask_chunks)
            self.masks = None

    def _after_optimizer_step(self, applied: bool) -> None:
        self.adam_step += int(applied)
        if applied and self.masks is not None:
            self._set_masks(self.masks.advanced(1))

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_root(self) -> Path:
        return self.checkpointer.root

    def checkpoint_meta(self) -> dict[str, Any]:
        """The engine-independent part of ``flm_checkpoint.json``."""
        return {
            "engine": self.engine,
            "consumed_samples": self.consumed_samples,
            "adam_step": self.adam_step,
            "config": run_config_to_dict(self.cfg),
            "growth_masks": None if self.masks is None else self.masks.to_dict(),
            "divergence": self.guard.state_dict(),
            **(
                {"data_position": self.train_source.position.to_dict()}
                if isinstance(self.train_source, PositionedSource)
                else {}
            ),
            **self._extra_meta,
        }

    def _resume_counters(self, meta: dict[str, Any]) -> None:
        """Step, data position, Adam step, masks and divergence state (the rollback count) of a
        resumed checkpoint."""
        self.step_count = int(meta["step"])
        self.consumed_samples = int(meta["consumed_samples"])
        self._enter_data(meta)
        self.adam_step = int(meta.get("adam_step", self.step_count))
        self._restore_masks(meta.get("growth_masks"))
        self.guard.load_state_dict(meta.get("divergence"))

    def _carry_moments(self, meta: dict[str, Any], moments: Optional[bool]) -> bool:
        """``init_from``'s rule: logical checkpoints (``flm grow`` / ``flm import-hf``) carry Adam's
        moments and step by default, training checkpoints give weights only."""
        carry = meta.get("has_moments", False) if moments is None else moments
        if carry:
            self.adam_step = int(meta.get("adam_step", 0))
        return bool(carry)

    def _continue_growth(self, meta: dict[str, Any]) -> None:
        """A grown checkpoint continues the data stream of the run it came from (its position entered
        with this trainer's blend), masks included."""
        growth = meta.get("growth")
        if growth:
            self.consumed_samples = int(meta.get("consumed_samples", 0))
            self._enter_data(meta)
            self._restore_masks(growth.get("masks"))

    # ---------------------------------------------------------------- the loop
    def _model_config(self, cfg: RunConfig, *, offload_optimizer: bool = False) -> None:
        """Set ``self.fusions`` (the fused kernels this process uses, logged on rank 0) and
        ``self.tconfig`` (megatron's ``TransformerConfig`` of the run): the same for both engines."""
        self.fusions = decide(
            cfg.model, cfg.train, engine=self.engine, device=process_device(), offload_optimizer=offload_optimizer
        )
        if self.layout.rank == 0:
            log.info("%s", self.fusions.summary())
        self.tconfig = transformer_config(
            cfg.model,
            cfg.parallel,
            bf16=self.bf16,
            gloo=self.layout.backend == "gloo",
            recompute=cfg.train.recompute,
            fusions=self.fusions,
        )

    def fit(self, *, until_step: Optional[int] = None, tracker: Optional[Tracker] = None) -> list[StepResult]:
        """Train to ``until_step`` (default ``train.steps``): log, validate and checkpoint on the way.
        ``tracker``: the job's experiment trackers (``training.engine.tracking``; opened and closed
        by the caller, who keeps them across stages), given every logged record on global rank 0.

        Around each step the profiler (``logging.profile``) starts, marks and ends its window.
        After each step, in this order (``training.engine.loop``): the divergence guard observes it;
        the meter builds its metrics record; validation when due (``eval_interval``, the last step);
        the record is logged when due (``log_interval``, validation, a skipped step); a diverged run
        stops or rolls back (and goes on with the next step); the checkpointer's periodic save;
        ``FLM_FAULT_AT``; the collective preemption check (save, then ``PreemptedError``). After the
        last step the checkpointer saves it unless it exists.
        """
        until = until_step or self.cfg.train.steps
        tcfg = self.cfg.train
        sink = MetricsSink(
            self.output_dir if self.layout.is_logging_rank else None,
            tensorboard=self.cfg.logging.tensorboard,
            progress_total=until if self.cfg.logging.progress_bar else None,
            progress_initial=self.step_count,
            resume_step=self.step_count,
        )
        tracker = tracker if self.layout.rank == 0 else None
        results = []
        self.guard.new_run()
        previous_handlers = self.preemption.install()
        try:
            while self.step_count < until:
                mask_value = self.mask_value
                self.profiler.before_step(self.step_count + 1)
                t0 = time.perf_counter()
                result = self.step()
                dt = time.perf_counter() - t0
                self.profiler.after_step(result.step)
                results.append(result)
                reason = self.guard.observe(result)
                record = self.meter.record(
                    result,
                    step_time_s=dt,
                    consumed_samples=self.consumed_samples,
                    mask_value=mask_value,
                    extra=self.guard.record_fields(),
                )
                if result.step % tcfg.eval_interval == 0 or result.step == until:
                    record["val_loss"] = self.evaluate()
                if result.step % tcfg.log_interval == 0 or "val_loss" in record or reason:
                    sink.log(record)
                    if tracker is not None:
                        tracker.log(record)
                if self.guard.diverged():
                    self._roll_back(result.step)
                    continue
                self.checkpointer.after_step(result.step, until=until, good=reason is None, save=self.save)
                faults.kill_if_due(self.cfg.name, result.step)
                if self.preemption.requested():
                    self.checkpointer.save_if_missing(self.step_count, self.save)
                    raise self.preemption.error(self.step_count, self.checkpointer.root)
            self.checkpointer.save_if_missing(self.step_count, self.save)
        finally:
            self.preemption.restore(previous_handlers)
            self.profiler.close()
            sink.close()
        return results

    # ---------------------------------------------------------------- divergence
    def _roll_back(self, step: int) -> None:
        """``divergence.max_consecutive`` bad steps in a row: the guard stops the run
        (``DivergenceError``), or the newest checkpoint that verifies is reloaded, the data position
        jumps past the bad batches and the LR schedule is scaled by ``rollback_lr_factor``."""
        d = self.cfg.divergence
        what = self.guard.before_rollback(step, self.consumed_samples)
        skip_to = self.consumed_samples
        state = self.guard.state_dict()
        target = self.checkpointer.newest_verified(self.load)
        # load restored the checkpoint's rollback count; this run's count goes on
        self.guard.load_state_dict(state)
        if target is None:
            raise DivergenceError(
                f"{what}; no checkpoint to roll back to in {self.checkpointer.root} (set checkpoint.save_interval)"
            )
        skipped = skip_to - self.consumed_samples
        self.consumed_samples = skip_to
        self._scale_lr(d.rollback_lr_factor)
        self.guard.rolled_back()
        if self.layout.rank == 0:
            log.warning(
                "%s; rolled back to %s (step %d), skipped %d samples of data, LR x%g (rollback %d of at most %d)",
                what,
                target,
                self.step_count,
                skipped,
                d.rollback_lr_factor,
                self.guard.rollbacks,
                d.max_rollbacks,
            )

    def _scale_lr(self, factor: float) -> None:
        """Multiply the LR schedule's peak and minimum by ``factor`` (saved with the scheduler state)."""
        scheduler = self.scheduler
        scheduler.max_lr *= factor
        scheduler.min_lr *= factor
        scheduler.init_lr *= factor
        for group in scheduler.optimizer.param_groups:
            for key in ("max_lr", "min_lr"):
                if group.get(key) is not None:
                    group[key] *= factor
