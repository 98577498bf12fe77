"""The megatron-core engine (``engine: megatron``): pipeline schedules, DDP, optimizer, LR schedule,
dist checkpoints.

One ``Trainer`` trains one model shape under one TP/PP/DP layout. Every rank of the job constructs it
the same way; ``step()`` is collective. Data order, masks, checkpoint metadata and the ``fit`` loop
(metrics, divergence policy, save cadence, fault injection, preemption) are shared with the
DeepSpeed engine in ``training.engine.trainer_base`` and ``training.engine.loop``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from training import checkpoint
from training.config import RunConfig
from training.data.source import SampleSource
from training.engine import megatron_checkpoint
from training.engine.model.build import build_model
from training.engine.optim import build_optimizer, build_scheduler, check_growth_can_carry
from training.engine.parallel import process_device
from training.engine.trainer_base import BaseTrainer, StepResult, token_mean_loss

log = logging.getLogger(__name__)


class Trainer(BaseTrainer):
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
        super().__init__(
            cfg,
            train_source=train_source,
            valid_source=valid_source,
            output_dir=output_dir,
            checkpoint_meta=checkpoint_meta,
        )
        self._model_config(cfg)
        chunks = build_model(cfg.model, self.tconfig, attention=cfg.train.attention, documents=cfg.data.reset_at_eos)
        if self.bf16:
            chunks = [Float16Module(self.tconfig, c) for c in chunks]
        overlap_grad, overlap_param = cfg.parallel.overlap(self.layout.backend)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=overlap_grad,
            overlap_param_gather=overlap_param,
            use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        )
        self.model = [
            DistributedDataParallel(config=self.tconfig, ddp_config=ddp_config, module=c, disable_bucketing=i > 0)
            for i, c in enumerate(chunks)
        ]
        self.optimizer = build_optimizer(
            cfg.train, self.model, bf16=self.bf16, distributed=cfg.parallel.distributed_optimizer, model=cfg.model
        )
        self.scheduler = build_scheduler(cfg.train, self.optimizer)
        self._overlap_param_gather = overlap_param
        if overlap_grad:  # as Megatron-LM wires it: reduce only after the last micro-batch, per chunk
            no_sync = [m.no_sync for m in self.model]
            grad_sync = [m.start_grad_sync for m in self.model]
            self.tconfig.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
            self.tconfig.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
        if overlap_param:  # parameters are gathered by forward pre-hooks of the next step
            param_sync = [m.start_param_sync for m in self.model]
            self.tconfig.param_sync_func = param_sync[0] if len(param_sync) == 1 else param_sync
        self.tconfig.finalize_model_grads_func = finalize_model_grads
        self.tconfig.grad_scale_func = self.optimizer.scale_loss
        self._fwd_bwd = get_forward_backward_func()

    @property
    def mask_chunks(self):
        return self.model

    def _iterators(self, micro_batches) -> list[Iterator] | Iterator:
        its = [iter(micro_batches) for _ in self.model]
        return its if len(its) > 1 else its[0]

    # ---------------------------------------------------------------- forward
    @staticmethod
    def _loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
        loss = token_mean_loss(loss_mask, output)
        # clone: the schedule divides the returned loss in place by the number of micro-batches
        return loss, {"lm loss": loss.detach().clone()}

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
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
        value = torch.zeros(1, dtype=torch.float64, device=process_device())
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
        skipped = self._skip_non_finite(loss, next_step)
        grad_norm = None
        if not skipped:
            self.scheduler.step(increment=1)
            ok, grad_norm, _ = self.optimizer.step()
            skipped = not ok
            self._after_optimizer_step(ok)
        self.step_count = next_step
        self.consumed_samples += self.cfg.train.global_batch_size
        lr = self.optimizer.param_groups[0]["lr"]
        return StepResult(next_step, loss, None if grad_norm is None else float(grad_norm), lr, skipped)

    def _forward_only_loss(self, micro_batches) -> float:
        return self._run_schedule(micro_batches, forward_only=True).item()

    def _set_train_mode(self, train: bool) -> None:
        for m in self.model:
            m.train(train)

    # ---------------------------------------------------------------- checkpoints
    def save(self, root: Optional[Path] = None) -> Path:
        if self._overlap_param_gather:  # the last step's parameter all-gather may still be pending
            for m in self.model:
                m.disable_forward_pre_hook(param_sync=True)
                m.enable_forward_pre_hook()
        return megatron_checkpoint.save(
            root or self.checkpoint_root(),
            step=self.step_count,
            model_chunks=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            layout=self.layout,
            meta=self.checkpoint_meta(),
            keep_last=self.cfg.checkpoint.keep_last,
        )

    def load(self, path: Path) -> dict[str, Any]:
        """Resume: model, optimizer, scheduler, RNG, step and consumed samples (any saved layout)."""
        checkpoint.check_engine(path, self.engine)
        meta = megatron_checkpoint.load(
            path, model_chunks=self.model, optimizer=self.optimizer, scheduler=self.scheduler, layout=self.layout
        )
        self._resume_counters(meta)
        return meta

    def init_from(self, path: Path, *, moments: Optional[bool] = None) -> dict[str, Any]:
        """Start from the weights of ``path`` (any engine, any layout) at step 0 with a fresh LR schedule.

        ``moments`` (default: when the checkpoint is a logical one written by ``flm grow`` /
        ``flm import-hf``) also carries Adam's moments and step, so training continues with the
        optimizer state the growth mapped (MSG: old moments kept, new entries zero).
        """
        meta = megatron_checkpoint.load(path, model_chunks=self.model)
        if self._carry_moments(meta, moments):
            check_growth_can_carry(self.cfg.train)
            megatron_checkpoint.load_moments(path, self.model, self.optimizer, self.adam_step)
        self._continue_growth(meta)
        return meta
