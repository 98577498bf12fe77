"""The training loop: megatron-core pipeline schedules, DDP, optimizer, LR schedule, logging,
validation, checkpoints.

One ``Trainer`` trains one model shape under one layout. Every rank of the job constructs it the
same way; ``step()`` is collective. Data: for optimizer step ``n`` the global batch is the samples
``consumed .. consumed + global_batch_size - 1`` of the train source; DP rank ``r`` takes the
``r``-th contiguous slice and splits it into micro-batches. Because the sample order depends only on
the global index, a resumed run (also with another DP size) sees the same batches.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from training import checkpoint
from training.config import RunConfig, run_config_to_dict
from training.data.source import SampleSource
from training.metrics import MetricsSink, device_peak_tflops, flops_per_token
from training.model.build import build_model, transformer_config
from training.optim import build_optimizer, build_scheduler
from training.parallel import Layout, setup_layout

log = logging.getLogger("flm.train")
# The project spec's MLP subclass is not in megatron's list of known MLP types; it gets the TP group
# through the spec's params, so megatron's "Unknown MLP type" warning is noise.
logging.getLogger("megatron.core.transformer.transformer_layer").setLevel(logging.ERROR)


class NonFiniteLossError(RuntimeError):
    pass


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


class Trainer:
    def __init__(self, cfg: RunConfig, *, train_source: SampleSource, valid_source: Optional[SampleSource] = None,
                 output_dir: Optional[Path] = None):
        self.cfg = cfg
        self.layout: Layout = setup_layout(cfg.parallel, cfg.train.seed)
        self.bf16 = use_bf16(cfg.train.precision)
        self.num_microbatches = cfg.train.micro_batches(self.layout.dp)
        self.train_source = train_source
        self.valid_source = valid_source
        self.output_dir = Path(output_dir or cfg.output_dir)
        self.tconfig = transformer_config(cfg.model, cfg.parallel, bf16=self.bf16, gloo=self.layout.backend == "gloo",
                                          recompute=cfg.train.recompute)
        chunks = build_model(cfg.model, self.tconfig)
        if self.bf16:
            chunks = [Float16Module(self.tconfig, c) for c in chunks]
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        )
        self.model = [
            DistributedDataParallel(config=self.tconfig, ddp_config=ddp_config, module=c,
                                    disable_bucketing=i > 0)
            for i, c in enumerate(chunks)
        ]
        self.optimizer = build_optimizer(cfg.train, self.model, bf16=self.bf16,
                                         distributed=cfg.parallel.distributed_optimizer)
        self.scheduler = build_scheduler(cfg.train, self.optimizer)
        self.tconfig.finalize_model_grads_func = finalize_model_grads
        self.tconfig.grad_scale_func = self.optimizer.scale_loss
        self.step_count = 0
        self.consumed_samples = 0
        #: optimizer updates applied (Adam's step for bias correction); differs from step_count
        #: when steps were skipped or the run started from a grown checkpoint with carried moments
        self.adam_step = 0
        #: MSG growth masks while they ramp (None: plain model); advanced after each optimizer step
        self.masks = None
        self.extra_meta: dict[str, Any] = {}
        self._fwd_bwd = get_forward_backward_func()
        self._flops_per_token = flops_per_token(cfg.model)
        self._peak = device_peak_tflops(cfg.logging.peak_tflops)

    # ---------------------------------------------------------------- data
    def _rank_batch(self, source: SampleSource, start: int) -> np.ndarray:
        gbs = self.cfg.train.global_batch_size
        per_rank = gbs // self.layout.dp
        first = start + self.layout.dp_rank * per_rank
        return np.stack([source.sample(i) for i in range(first, first + per_rank)])

    def _micro_batches(self, samples: np.ndarray) -> list[dict[str, torch.Tensor]]:
        mbs = self.cfg.train.micro_batch_size
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
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

    def _iterators(self, micro_batches) -> list[Iterator] | Iterator:
        its = [iter(micro_batches) for _ in self.model]
        return its if len(its) > 1 else its[0]

    # ---------------------------------------------------------------- forward
    @staticmethod
    def _loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
        loss = (output.float() * loss_mask).sum() / loss_mask.sum()
        # clone: the schedule divides the returned loss in place by the number of micro-batches
        return loss, {"lm loss": loss.detach().clone()}

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        return output, partial(self._loss_func, batch["loss_mask"])

    def _run_schedule(self, micro_batches, forward_only: bool) -> torch.Tensor:
        """Run the pipeline schedule; returns the global-batch mean loss on every rank."""
        losses = self._fwd_bwd(
            forward_step_func=self._forward_step,
            data_iterator=self._iterators(micro_batches),
            model=self.model,
            num_microbatches=len(micro_batches),
            seq_length=self.cfg.model.seq_length,
            micro_batch_size=self.cfg.train.micro_batch_size,
            forward_only=forward_only,
        )
        return self._reduce_loss(losses)

    def _reduce_loss(self, losses) -> torch.Tensor:
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        value = torch.zeros(1, dtype=torch.float64, device=device)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            value += torch.stack([x["lm loss"].double() for x in losses]).mean()
            dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
            value /= self.layout.dp
        if self.layout.pp > 1:
            dist.all_reduce(value, group=parallel_state.get_pipeline_model_parallel_group())
        return value

    # ---------------------------------------------------------------- steps
    def step(self) -> StepResult:
        """One optimizer step on the next global batch (collective)."""
        samples = self._rank_batch(self.train_source, self.consumed_samples)
        micro = self._micro_batches(samples)
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss = self._run_schedule(micro, forward_only=False).item()
        next_step = self.step_count + 1
        skipped = False
        grad_norm = None
        if not math.isfinite(loss):
            if self.cfg.train.on_nan == "raise":
                raise NonFiniteLossError(
                    f"loss is {loss} at step {next_step} (consumed samples {self.consumed_samples}); "
                    "set train.on_nan=skip to skip such steps, or lower train.lr"
                )
            skipped = True
        else:
            self.scheduler.step(increment=1)
            ok, grad_norm, _ = self.optimizer.step()
            skipped = not ok
            self.adam_step += int(ok)
            if ok and self.masks is not None:
                self._set_masks(self.masks.advanced(1))
        self.step_count = next_step
        self.consumed_samples += self.cfg.train.global_batch_size
        lr = self.optimizer.param_groups[0]["lr"]
        return StepResult(next_step, loss, None if grad_norm is None else float(grad_norm), lr, skipped)

    @torch.no_grad()
    def evaluate(self, batches: Optional[int] = None) -> float:
        """Mean validation loss over the first ``batches`` global batches of the validation source."""
        source = self.valid_source or self.train_source
        n = batches or self.cfg.train.eval_batches
        for m in self.model:
            m.eval()
        total = 0.0
        for b in range(n):
            micro = self._micro_batches(self._rank_batch(source, b * self.cfg.train.global_batch_size))
            total += self._run_schedule(micro, forward_only=True).item()
        for m in self.model:
            m.train()
        return total / n

    # ---------------------------------------------------------------- growth masks
    def _set_masks(self, state) -> None:
        """Apply MSG masks at their ramp position; once the ramp is done they are removed."""
        from growth.masks import apply_masks

        self.masks = state if state is not None and apply_masks(self.model, state) else None
        if state is not None and self.masks is None and self.layout.rank == 0:
            log.info("growth masks reached 1 and were removed; the model is plain again")

    @property
    def mask_value(self) -> Optional[float]:
        return None if self.masks is None else self.masks.value()

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_root(self) -> Path:
        return Path(self.cfg.checkpoint.dir) if self.cfg.checkpoint.dir else self.output_dir / "checkpoints"

    def save(self, root: Optional[Path] = None) -> Path:
        meta = {"consumed_samples": self.consumed_samples, "adam_step": self.adam_step,
                "config": run_config_to_dict(self.cfg),
                "growth_masks": None if self.masks is None else self.masks.to_dict(), **self.extra_meta}
        return checkpoint.save(root or self.checkpoint_root(), step=self.step_count, model_chunks=self.model,
                               optimizer=self.optimizer, scheduler=self.scheduler, layout=self.layout, meta=meta,
                               keep_last=self.cfg.checkpoint.keep_last)

    def load(self, path: Path) -> dict[str, Any]:
        """Resume: model, optimizer, scheduler, RNG, step and consumed samples (any saved layout)."""
        meta = checkpoint.load(path, model_chunks=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                               layout=self.layout)
        self.step_count = int(meta["step"])
        self.consumed_samples = int(meta["consumed_samples"])
        self.adam_step = int(meta.get("adam_step", self.step_count))
        self._restore_masks(meta.get("growth_masks"))
        return meta

    def _restore_masks(self, data) -> None:
        from growth.masks import MaskState, clear_masks

        if data:
            self._set_masks(MaskState.from_dict(data))
        else:
            clear_masks(self.model)
            self.masks = None

    def init_from(self, path: Path, *, moments: Optional[bool] = None) -> dict[str, Any]:
        """Start from the weights of ``path`` at step 0 with a fresh LR schedule.

        ``moments`` (default: when the checkpoint is a logical one written by ``flm grow`` /
        ``flm import-hf``) also carries Adam's moments and step, so training continues with the
        optimizer state the growth mapped (MSG: old moments kept, new entries zero).
        """
        from training.logical import load_moments

        meta = checkpoint.load(path, model_chunks=self.model)
        carry = meta.get("has_moments", False) if moments is None else moments
        if carry:
            self.adam_step = int(meta.get("adam_step", 0))
            load_moments(path, self.model, self.optimizer, self.adam_step)
        growth = meta.get("growth")
        if growth:
            # a grown checkpoint continues the data stream of the run it came from
            self.consumed_samples = int(meta.get("consumed_samples", 0))
            self._restore_masks(growth.get("masks"))
        return meta

    def _maybe_inject_fault(self, step: int) -> None:
        """Fault injection for kill-and-resume tests and drills: ``FLM_FAULT_AT=<run name>:<step>``
        kills every process of the run abruptly (``os._exit``, no cleanup) right after that step."""
        import os

        target = os.environ.get("FLM_FAULT_AT")
        if target and target == f"{self.cfg.name}:{step}":
            import multiprocessing

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
