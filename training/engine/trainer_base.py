"""What every training engine shares: data order, loss, NaN policy, growth masks, the ``fit`` loop.

An engine (``training.engine.trainer.Trainer`` for megatron-core, ``training.engine.ds_trainer.DeepSpeedTrainer``
for DeepSpeed ZeRO) subclasses :class:`BaseTrainer` and implements the collective operations
``step``, ``save``, ``load``, ``init_from`` and the forward-only loss ``_forward_only_loss``; it
exposes the modules that carry growth masks as ``mask_chunks``. Everything the user sees besides the
numbers — which samples a step trains on, the metrics records, validation, checkpoint cadence, fault
injection, mask ramps — lives here, so the engines cannot drift apart.

Data: for optimizer step ``n`` the global batch is the samples ``consumed .. consumed +
global_batch_size - 1`` of the train source; DP rank ``r`` takes the ``r``-th contiguous slice and
splits it into micro-batches. The order depends only on the global index, so a resumed run (also
with another DP size or engine) sees the same batches.
"""

from __future__ import annotations

import collections
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from growth.masks import MaskState
from training import checkpoint
from training.checkpoint.integrity import resume_verified
from training.config import RunConfig, run_config_to_dict
from training.data.source import SampleSource
from training.engine.metrics import MetricsSink, device_peak_tflops
from training.engine.model.masks import apply_masks, clear_masks
from training.engine.parallel import Layout, process_device, setup_layout
from training.errors import PREEMPTED_EXIT_CODE, FLMError, PreemptedError
from training.model_size import flops_per_token

log = logging.getLogger(__name__)


class NonFiniteLossError(FLMError, RuntimeError):
    """The loss was not finite and ``train.on_nan`` is ``raise`` (the message names the step)."""

    exit_code = 1


class DivergenceError(FLMError, RuntimeError):
    """Too many skipped or spiking steps in a row (``divergence:``); the message names the steps."""

    exit_code = 1


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _injected_loss(run_name: str, batch: int, loss: float) -> float:
    """Fault injection: ``FLM_FAULT_LOSS=<run name>:<first>-<last>:<nan|spike>`` replaces the loss of
    the global batches ``first..last`` (1-based, by data position, so a rollback that skips them
    sees no more faults) with NaN or ``loss * 1e6``."""
    spec = os.environ.get("FLM_FAULT_LOSS")
    if not spec:
        return loss
    name, _, rest = spec.rpartition(":")
    name, _, span = name.rpartition(":")
    first, _, last = span.partition("-")
    if name != run_name or not int(first) <= batch <= int(last or first):
        return loss
    return float("nan") if rest == "nan" else loss * 1e6


@dataclass
class StepResult:
    step: int
    loss: float
    grad_norm: Optional[float]
    lr: float
    skipped: bool


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

    def __init__(
        self,
        cfg: RunConfig,
        *,
        train_source: SampleSource,
        valid_source: Optional[SampleSource] = None,
        output_dir: Optional[Path] = None,
        checkpoint_meta: Optional[dict[str, Any]] = None,
    ):
        self.cfg = cfg
        self.layout: Layout = setup_layout(cfg.parallel, cfg.train.seed)
        self.bf16 = use_bf16(cfg.train.precision)
        self.num_microbatches = cfg.train.micro_batches(self.layout.dp)
        self.train_source = train_source
        self.valid_source = valid_source
        self.output_dir = Path(output_dir or cfg.output_dir)
        self.step_count = 0
        self.consumed_samples = 0
        #: optimizer updates applied (Adam's step for bias correction); differs from step_count
        #: when steps were skipped or the run started from a grown checkpoint with carried moments
        self.adam_step = 0
        #: MSG growth masks while they ramp (None: plain model); advanced after each optimizer step
        self.masks = None
        #: extra fields of every checkpoint's metadata (a staged run's stage index and name)
        self.extra_meta: dict[str, Any] = dict(checkpoint_meta or {})
        self._flops_per_token = flops_per_token(cfg.model)
        self._peak = device_peak_tflops(cfg.logging.peak_tflops)
        #: divergence policy state: recent good losses, why the last step was skipped, rollbacks done
        self._recent_losses: collections.deque = collections.deque(maxlen=cfg.divergence.window)
        self._skip_reason: Optional[str] = None
        self._checked_loss: Optional[float] = None
        self.rollbacks = 0
        self._signal: Optional[int] = None

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
            out.append(
                {
                    "tokens": tokens,
                    "labels": labels,
                    "position_ids": torch.arange(tokens.shape[1], device=device).expand_as(tokens),
                    "loss_mask": torch.ones_like(labels, dtype=torch.float32),
                }
            )
        return out

    def _skip_non_finite(self, loss: float, step: int) -> bool:
        """NaN and spike policy for the global-batch loss (the same value on every rank, so every
        rank decides alike): True when the step's update must be skipped (a non-finite loss under
        ``train.on_nan=skip``, or a spike, see ``divergence:``); raises under ``train.on_nan=raise``."""
        batch = self.consumed_samples // self.cfg.train.global_batch_size + 1
        loss = _injected_loss(self.cfg.name, batch, loss)
        self._checked_loss = loss
        self._skip_reason = None
        if not math.isfinite(loss):
            if self.cfg.train.on_nan == "raise":
                raise NonFiniteLossError(
                    f"loss is {loss} at step {step} (consumed samples {self.consumed_samples}); "
                    "set train.on_nan=skip to skip such steps, or lower train.lr"
                )
            self._skip_reason = "non_finite"
            if self.layout.rank == 0:
                log.warning("step %d: loss is %s; update skipped", step, loss)
            return True
        if self._is_spike(loss):
            self._skip_reason = "spike"
            if self.layout.rank == 0:
                mean = sum(self._recent_losses) / len(self._recent_losses)
                log.warning("step %d: loss spike %.4g (recent mean %.4g); update skipped", step, loss, mean)
            return True
        return False

    def _is_spike(self, loss: float) -> bool:
        d = self.cfg.divergence
        if not d.spike_sigmas or len(self._recent_losses) < d.window:
            return False
        mean = sum(self._recent_losses) / len(self._recent_losses)
        std = math.sqrt(sum((x - mean) ** 2 for x in self._recent_losses) / len(self._recent_losses))
        return loss > mean + d.spike_sigmas * std and loss > d.spike_ratio * mean

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
        return Path(self.cfg.checkpoint.dir) if self.cfg.checkpoint.dir else self.output_dir / "checkpoints"

    def checkpoint_meta(self) -> dict[str, Any]:
        """The engine-independent part of ``flm_checkpoint.json``."""
        return {
            "engine": self.engine,
            "consumed_samples": self.consumed_samples,
            "adam_step": self.adam_step,
            "config": run_config_to_dict(self.cfg),
            "growth_masks": None if self.masks is None else self.masks.to_dict(),
            **self.extra_meta,
        }

    def _resume_counters(self, meta: dict[str, Any]) -> None:
        """Step, data position, Adam step and masks of a resumed checkpoint."""
        self.step_count = int(meta["step"])
        self.consumed_samples = int(meta["consumed_samples"])
        self.adam_step = int(meta.get("adam_step", self.step_count))
        self._restore_masks(meta.get("growth_masks"))

    def _carry_moments(self, meta: dict[str, Any], moments: Optional[bool]) -> bool:
        """``init_from``'s rule: logical checkpoints (``flm grow`` / ``flm import-hf``) carry Adam's
        moments and step by default, training checkpoints give weights only."""
        carry = meta.get("has_moments", False) if moments is None else moments
        if carry:
            self.adam_step = int(meta.get("adam_step", 0))
        return bool(carry)

    def _continue_growth(self, meta: dict[str, Any]) -> None:
        """A grown checkpoint continues the data stream of the run it came from, masks included."""
        growth = meta.get("growth")
        if growth:
            self.consumed_samples = int(meta.get("consumed_samples", 0))
            self._restore_masks(growth.get("masks"))

    def _maybe_inject_fault(self, step: int) -> None:
        """Fault injection for kill-and-resume tests and drills: ``FLM_FAULT_AT=<run name>:<step>``
        kills every process of the run abruptly (``os._exit``, no cleanup) right after that step."""

        target = os.environ.get("FLM_FAULT_AT")
        if target and target == f"{self.cfg.name}:{step}":
            sys.stderr.write(f"FLM_FAULT_AT: killing {self.cfg.name} after step {step}\n")
            sys.stderr.flush()
            for child in multiprocessing.active_children():  # as a scheduler kills the whole process tree
                child.kill()
            os._exit(43)

    # ---------------------------------------------------------------- the loop
    def fit(self, *, until_step: Optional[int] = None) -> list[StepResult]:
        """Train to ``until_step`` (default ``train.steps``): log, validate and checkpoint on the way."""
        until = until_step or self.cfg.train.steps
        tcfg, ccfg = self.cfg.train, self.cfg.checkpoint
        sink = MetricsSink(
            self.output_dir if self.layout.is_logging_rank else None,
            tensorboard=self.cfg.logging.tensorboard,
            progress_total=until if self.cfg.logging.progress_bar else None,
            progress_initial=self.step_count,
            resume_step=self.step_count,
        )
        tokens_per_step = tcfg.global_batch_size * self.cfg.model.seq_length
        results = []
        consecutive = 0
        previous_handlers = self._install_signal_handlers()
        try:
            while self.step_count < until:
                mask_value = self.mask_value
                t0 = time.perf_counter()
                result = self.step()
                dt = time.perf_counter() - t0
                results.append(result)
                reason = self._skip_reason if result.skipped else None
                consecutive = consecutive + 1 if reason else 0
                if not result.skipped and math.isfinite(result.loss):
                    self._recent_losses.append(result.loss)
                record = {
                    "step": result.step,
                    "loss": result.loss,
                    "lr": result.lr,
                    "grad_norm": result.grad_norm,
                    "skipped": result.skipped,
                    "consumed_samples": self.consumed_samples,
                    "tokens": self.consumed_samples * self.cfg.model.seq_length,
                    "step_time_s": dt,
                    "tokens_per_s": tokens_per_step / dt,
                    "mask_value": mask_value,
                }
                if reason:
                    record.update(skip_reason=reason, consecutive_skips=consecutive)
                if reason == "spike":
                    record["spike_loss"] = self._checked_loss
                if self.rollbacks:
                    record["rollbacks"] = self.rollbacks
                achieved = record["tokens_per_s"] * self._flops_per_token / self.layout.world_size / 1e12
                record["tflops_per_device"] = achieved
                record["mfu"] = achieved / self._peak if self._peak else None
                if result.step % tcfg.eval_interval == 0 or result.step == until:
                    record["val_loss"] = self.evaluate()
                if result.step % tcfg.log_interval == 0 or "val_loss" in record or reason:
                    sink.log(record)
                if consecutive >= self.cfg.divergence.max_consecutive:
                    self._diverged(result.step, consecutive, reason)
                    consecutive = 0
                    continue
                # periodic saves only after a good step: a rollback never returns into a run of bad steps
                if (
                    ccfg.save_interval
                    and result.step % ccfg.save_interval == 0
                    and result.step != until
                    and not consecutive
                ):
                    self.save()
                self._maybe_inject_fault(result.step)
                if self._preemption_requested():
                    self._save_if_missing()
                    raise PreemptedError(
                        f"stopped by {signal.Signals(self._signal or signal.SIGTERM).name} after step {self.step_count}; "
                        f"checkpoint saved in {self.checkpoint_root()}; continue with --resume "
                        f"(exit status {PREEMPTED_EXIT_CODE})"
                    )
            self._save_if_missing()
        finally:
            self._restore_signal_handlers(previous_handlers)
            sink.close()
        return results

    def _save_if_missing(self) -> None:
        if not checkpoint.is_checkpoint(self.checkpoint_root() / checkpoint.step_dir_name(self.step_count)):
            self.save()

    # ---------------------------------------------------------------- preemption
    def _install_signal_handlers(self) -> dict:
        """SIGTERM/SIGUSR1 set a flag; the loop stops after the current step, saving first."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        self._signal = None

        def handler(signum, frame):
            if self._signal is None:
                self._signal = signum
                sys.stderr.write(f"flm: {signal.Signals(signum).name} received: saving after the current step\n")

        return {sig: signal.signal(sig, handler) for sig in PREEMPTION_SIGNALS}

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def _preemption_requested(self) -> bool:
        """Whether any rank got a preemption signal (collective: every rank stops at the same step)."""
        flag = int(self._signal is not None)
        if dist.is_initialized() and dist.get_world_size() > 1:
            device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
            t = torch.tensor([flag], dtype=torch.int32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
            if flag and self._signal is None:
                self._signal = signal.SIGTERM
        return bool(flag)

    # ---------------------------------------------------------------- divergence
    def _diverged(self, step: int, consecutive: int, reason: Optional[str]) -> None:
        """``divergence.max_consecutive`` skipped or spiking steps in a row: stop, or roll back."""
        d = self.cfg.divergence
        what = (
            f"{consecutive} skipped steps in a row ({reason.replace('_', '-')} loss) up to step {step}, "
            f"consumed samples {self.consumed_samples}"
        )
        if d.action == "stop":
            raise DivergenceError(
                f"{what}; the run diverged and stops without saving: resume from the last checkpoint with a "
                "lower train.lr, or set divergence.action=rollback"
            )
        if self.rollbacks >= d.max_rollbacks:
            raise DivergenceError(
                f"{what}, after {self.rollbacks} rollbacks (divergence.max_rollbacks); "
                "the run stops: lower train.lr or inspect the data around these samples"
            )
        skip_to = self.consumed_samples
        target = resume_verified(self.checkpoint_root(), self.load, check_hash=self.cfg.checkpoint.verify_hash)
        if target is None:
            raise DivergenceError(
                f"{what}; no checkpoint to roll back to in {self.checkpoint_root()} (set checkpoint.save_interval)"
            )
        skipped = skip_to - self.consumed_samples
        self.consumed_samples = skip_to
        self._scale_lr(d.rollback_lr_factor)
        self.rollbacks += 1
        if self.layout.rank == 0:
            log.warning(
                "%s; rolled back to %s (step %d), skipped %d samples of data, LR x%g (rollback %d of at most %d)",
                what,
                target,
                self.step_count,
                skipped,
                d.rollback_lr_factor,
                self.rollbacks,
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
