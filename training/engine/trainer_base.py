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

import logging
import math
import multiprocessing
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from growth.masks import MaskState
from training import checkpoint
from training.config import RunConfig, run_config_to_dict
from training.data.source import SampleSource
from training.engine.model.masks import apply_masks, clear_masks
from training.engine.parallel import Layout, process_device, setup_layout
from training.errors import FLMError
from training.metrics import MetricsSink, device_peak_tflops, flops_per_token

log = logging.getLogger(__name__)


class NonFiniteLossError(FLMError, RuntimeError):
    """The loss was not finite and ``train.on_nan`` is ``raise`` (the message names the step)."""

    exit_code = 1


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

    def __init__(self, cfg: RunConfig, *, train_source: SampleSource, valid_source: Optional[SampleSource] = None,
                 output_dir: Optional[Path] = None):
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
        self.extra_meta: dict[str, Any] = {}
        self._flops_per_token = flops_per_token(cfg.model)
        self._peak = device_peak_tflops(cfg.logging.peak_tflops)

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
            chunk = torch.from_numpy(samples[i:i + mbs]).to(device)
            tokens, labels = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            out.append({
                "tokens": tokens,
                "labels": labels,
                "position_ids": torch.arange(tokens.shape[1], device=device).expand_as(tokens),
                "loss_mask": torch.ones_like(labels, dtype=torch.float32),
            })
        return out

    def _skip_non_finite(self, loss: float, step: int) -> bool:
        """NaN policy for the global-batch loss (the same value on every rank, so every rank decides
        alike): True when the step must be skipped; raises under ``train.on_nan=raise``."""
        if math.isfinite(loss):
            return False
        if self.cfg.train.on_nan == "raise":
            raise NonFiniteLossError(
                f"loss is {loss} at step {step} (consumed samples {self.consumed_samples}); "
                "set train.on_nan=skip to skip such steps, or lower train.lr"
            )
        return True

    @torch.no_grad()
    def evaluate(self, batches: Optional[int] = None) -> float:
        """Mean validation loss over the first ``batches`` global batches of the validation source."""
        source = self.valid_source or self.train_source
        n = batches or self.cfg.train.eval_batches
        self._set_train_mode(False)
        total = 0.0
        for b in range(n):
            total += self._forward_only_loss(self._micro_batches(self._rank_batch(source, b * self.cfg.train.global_batch_size)))
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
        return {"engine": self.engine, "consumed_samples": self.consumed_samples, "adam_step": self.adam_step,
                "config": run_config_to_dict(self.cfg),
                "growth_masks": None if self.masks is None else self.masks.to_dict(), **self.extra_meta}

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
        )
        tokens_per_step = tcfg.global_batch_size * self.cfg.model.seq_length
        results = []
        try:
            while self.step_count < until:
                mask_value = self.mask_value
                t0 = time.perf_counter()
                result = self.step()
                dt = time.perf_counter() - t0
                results.append(result)
                record = {"step": result.step, "loss": result.loss, "lr": result.lr,
                          "grad_norm": result.grad_norm, "skipped": result.skipped,
                          "consumed_samples": self.consumed_samples,
                          "tokens": self.consumed_samples * self.cfg.model.seq_length,
                          "step_time_s": dt, "tokens_per_s": tokens_per_step / dt,
                          "mask_value": mask_value}
                achieved = record["tokens_per_s"] * self._flops_per_token / self.layout.world_size / 1e12
                record["tflops_per_device"] = achieved
                record["mfu"] = achieved / self._peak if self._peak else None
                if result.step % tcfg.eval_interval == 0 or result.step == until:
                    record["val_loss"] = self.evaluate()
                if result.step % tcfg.log_interval == 0 or "val_loss" in record:
                    sink.log(record)
                if ccfg.save_interval and result.step % ccfg.save_interval == 0 and result.step != until:
                    self.save()
                self._maybe_inject_fault(result.step)
            if not checkpoint.is_checkpoint(self.checkpoint_root() / checkpoint.step_dir_name(self.step_count)):
                self.save()
        finally:
            sink.close()
        return results
