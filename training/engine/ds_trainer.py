"""The DeepSpeed ZeRO engine (``engine: deepspeed``): data parallelism with ZeRO stage 1, 2 or 3.

The model is the megatron engine's: megatron-core ``GPTModel`` with the project's layer spec
(``training.engine.model.build``), built under a TP = PP = 1 ``parallel_state`` whose DP group is the whole
world, then wrapped by ``deepspeed.initialize``. Everything that defines the numbers matches the
megatron engine, so both give the same losses on the same data (tested):

- optimizer: torch's ``AdamW`` with megatron's parameter groups (``_get_param_groups``: no weight
  decay on biases and norms; under μP the hidden matrices' group with LR ``lr / m``), handed to
  DeepSpeed as a client optimizer — no DeepSpeed op is compiled (its fused/CPU Adam would be JIT-built);
- LR and weight decay: megatron's ``OptimizerParamScheduler`` (``training.engine.optim.build_scheduler``)
  driving the ZeRO optimizer's parameter groups, stepped only for finite losses as in the megatron
  engine;
- clipping: DeepSpeed's ``gradient_clipping`` (the same global-norm rule); gradient accumulation:
  one ``engine.backward``/``engine.step`` per micro-batch, DeepSpeed averaging over micro-batches
  and DP ranks as megatron's schedule and DDP do;
- data order, metrics, validation, masks, fault injection: ``training.engine.trainer_base`` and
  ``training.engine.loop``.

NaN policy: the global loss is known after the last micro-batch's forward, before its backward. On
``raise`` the step raises; on ``skip`` that backward is made non-finite, which sends the step into
DeepSpeed's own overflow path (the update is skipped, the gradients are cleared and its counters stay
consistent on every rank) — checked with ``engine.was_step_applied()``.

Checkpoints are project checkpoints (``training.engine.ds_checkpoint``): growable, usable by either engine's
``--init-from``, resumable under any DP size and ZeRO stage.

Limitations: DeepSpeed's ZeRO-3 partitions the model at ``deepspeed.initialize``, so the model is built
whole once per rank first (no ``zero.Init``); activation recomputation is megatron's (inside the
model), not DeepSpeed's activation checkpointing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist
from megatron.core.optimizer import _get_param_groups
from megatron.core.transformer.module import Float16Module

from training import checkpoint
from training.config import RunConfig
from training.data.source import SampleSource
from training.engine import ds_checkpoint
from training.engine.megatron_checkpoint import restore_rng
from training.engine.model.build import build_model
from training.engine.optim import (
    build_scheduler,
    client_adamw,
    init_torch_adam_state,
    optimizer_config,
    param_group_overrides,
    set_torch_adam_step,
)
from training.engine.trainer_base import BaseTrainer, StepResult, token_mean_loss

log = logging.getLogger(__name__)


def import_deepspeed():
    """``deepspeed``, with its communication backend set up on the existing process group.

    On machines without CUDA DeepSpeed's ``init_distributed`` JIT-compiles a shared-memory op
    (~50 s and a C++ compiler) that serves only ``inference_all_reduce`` (AutoTP inference), which
    training never calls; its entry in DeepSpeed's compatible-ops table (meant to be edited: the
    dict is cached in ``deepspeed.ops``) is switched off so nothing is compiled.
    """

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend=dist.get_backend(), verbose=False)
    return deepspeed


def _single_process_local_rank() -> None:
    """DeepSpeed reads ``LOCAL_RANK`` at initialize and during ZeRO-3 steps; a plain single process
    (no launcher) has none, and it is local rank 0. (``training.engine.parallel`` otherwise leaves
    ``os.environ`` alone; a launcher started from this process sets its own ``LOCAL_RANK``.)"""
    if "RANK" not in os.environ:
        os.environ.setdefault("LOCAL_RANK", "0")


def deepspeed_config(cfg: RunConfig, dp: int, bf16: bool) -> dict[str, Any]:
    """The DeepSpeed config derived from the run config (batch sizes, clipping, ZeRO, precision)."""
    t, ds = cfg.train, cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage, "overlap_comm": False}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    config: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * dp),
        "gradient_clipping": t.clip_grad,
        "zero_optimization": zero,
        # the client optimizer is torch's AdamW; with offload DeepSpeed would otherwise insist on
        # its compiled CPU Adam
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    if bf16:
        # as the megatron engine: bf16 weights, fp32 master weights and fp32 gradient accumulation;
        # non-finite gradients skip the step
        config["bf16"] = {"enabled": True, "check_grad_overflow": True}
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def param_groups(module: torch.nn.Module, cfg: RunConfig) -> list[dict[str, Any]]:
    """megatron's optimizer parameter groups for ``module`` (the weight-decay rule, μP's hidden-matrix
    group, and the ``wd_mult``/``max_lr``/``min_lr`` keys ``OptimizerParamScheduler`` reads), so both
    engines decay and scale the same parameters alike (``training.engine.optim.param_group_overrides``).
    Collective (megatron aligns the groups across ranks)."""

    config = optimizer_config(cfg.train)
    return _get_param_groups([module], config, param_group_overrides(cfg.model, config))


class DeepSpeedTrainer(BaseTrainer):
    engine = "deepspeed"

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
        if self.layout.tp != 1 or self.layout.pp != 1:
            raise ValueError("the DeepSpeed engine needs parallel.tp = parallel.pp = 1 (checked at config load)")
        deepspeed = import_deepspeed()
        self._model_config(cfg, offload_optimizer=cfg.deepspeed.offload_optimizer)
        (gpt,) = build_model(cfg.model, self.tconfig, attention=cfg.train.attention, documents=cfg.data.reset_at_eos)
        module = Float16Module(self.tconfig, gpt) if self.bf16 else gpt
        self.entries = ds_checkpoint.param_entries(module)  # before ZeRO-3 partitions the parameters
        t = cfg.train
        client = client_adamw(param_groups(module, cfg), t, fused=self.fusions.adamw)
        if cfg.deepspeed.zero_stage == 3 and cfg.model.tie_embeddings:
            # the output layer reads the embedding weight outside the embedding's forward: ZeRO-3
            # must gather it for the whole model forward
            deepspeed.zero.register_external_parameter(gpt, gpt.embedding.word_embeddings.weight)
        _single_process_local_rank()
        self.ds_engine, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=client, config=deepspeed_config(cfg, self.layout.dp, self.bf16)
        )
        self._init_optimizer_state()
        self.scheduler = build_scheduler(t, self.optimizer)

    @property
    def mask_chunks(self):
        return [self.ds_engine.module]

    def _init_optimizer_state(self) -> None:
        """Explicit zero Adam state (step 0), as the megatron engine has, so moments can be read and
        set before the first step. ZeRO-1/2 link each parameter to its slice of the flat optimizer
        state only after their first step (``_lazy_init_hp_params_optimizer_state``, which
        ``safe_get/set_full_optimizer_state`` need); the link is made here, right away."""
        # the flat fp32 partitions the inner AdamW updates (ZeRO-3 puts them into its parameter
        # groups only for the duration of each step)
        flat = getattr(self.optimizer, "fp32_partitioned_groups_flat", None) or getattr(
            self.optimizer, "single_partition_of_fp32_groups", None
        )
        if not flat:
            raise RuntimeError(f"internal: no flat fp32 partitions in DeepSpeed's {type(self.optimizer).__name__}")
        init_torch_adam_state(self.optimizer.optimizer, flat)
        link = getattr(self.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:
            link()
        elif self.cfg.deepspeed.zero_stage in (1, 2):
            raise RuntimeError(
                f"DeepSpeed {deepspeed.__version__}: the ZeRO-1/2 optimizer has no "
                "_lazy_init_hp_params_optimizer_state; the tested range is pinned in pyproject.toml"
            )

    # ---------------------------------------------------------------- steps
    def _micro_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        output = self.ds_engine(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
        return token_mean_loss(batch["loss_mask"], output)

    def _global_mean(self, losses: list[torch.Tensor]) -> float:
        """Mean of the micro-batch losses over micro-batches and DP ranks (the megatron engine's value)."""
        value = torch.stack([x.double() for x in losses]).mean().reshape(1)
        dist.all_reduce(value)
        return (value / self.layout.dp).item()

    def step(self) -> StepResult:
        """One optimizer step on the next global batch (collective)."""
        micro = self._micro_batches(self._rank_batch(self.train_source, self.consumed_samples))
        next_step = self.step_count + 1
        losses: list[torch.Tensor] = []
        skipped = False
        for i, batch in enumerate(micro):
            loss = self._micro_loss(batch)
            losses.append(loss.detach())
            if i == len(micro) - 1:
                global_loss = self._global_mean(losses)
                skipped = self._skip_non_finite(global_loss, next_step)
                if skipped:
                    loss = loss * float("nan")  # DeepSpeed's overflow path skips the update (see module doc)
                else:
                    self.scheduler.step(increment=1)
            self.ds_engine.backward(loss)
            self.ds_engine.step()
        applied = self.ds_engine.was_step_applied()
        if skipped and applied:
            raise RuntimeError("internal: DeepSpeed applied an update for a step with a non-finite loss")
        grad_norm = self.ds_engine.get_global_grad_norm() if applied else None
        self._after_optimizer_step(applied)
        self.step_count = next_step
        self.consumed_samples += self.cfg.train.global_batch_size
        lr = self.optimizer.param_groups[0]["lr"]
        return StepResult(
            next_step, global_loss, None if grad_norm is None else float(grad_norm), lr, skipped or not applied
        )

    def _forward_only_loss(self, micro_batches) -> float:
        return self._global_mean([self._micro_loss(b) for b in micro_batches])

    def _set_train_mode(self, train: bool) -> None:
        self.ds_engine.train(train)

    # ---------------------------------------------------------------- checkpoints
    def save(self, root: Optional[Path] = None) -> Path:
        meta = dict(self.checkpoint_meta(), zero_stage=self.cfg.deepspeed.zero_stage)
        return ds_checkpoint.save(
            root or self.checkpoint_root(),
            step=self.step_count,
            entries=self.entries,
            scheduler=self.scheduler,
            layout=self.layout,
            meta=meta,
            keep_last=self.cfg.checkpoint.keep_last,
        )

    def load(self, path: Path) -> dict[str, Any]:
        """Resume a DeepSpeed-engine checkpoint saved under any DP size and ZeRO stage: weights, Adam
        moments and step, LR schedule, RNG (same DP size), step, data position and masks."""
        path = checkpoint.resolve(path)
        checkpoint.check_engine(path, self.engine)
        meta = checkpoint.read_meta(path)
        ds_checkpoint.load_into(path, self.entries, weights=True, moments=True, require_moments=True)
        set_torch_adam_step(self.optimizer.optimizer, int(meta.get("adam_step", meta["step"])))
        state = ds_checkpoint.load_scheduler_state(path)
        if state is None:
            raise checkpoint.CheckpointError(f"{path} has no LR scheduler state; it cannot be resumed")
        self.scheduler.load_state_dict(state)
        restore_rng(path, self.layout)
        self._resume_counters(meta)
        return meta

    def init_from(self, path: Path, *, moments: Optional[bool] = None) -> dict[str, Any]:
        """Start from the weights of ``path`` — a checkpoint of either engine under any layout, or a
        logical one from ``flm grow`` / ``flm import-hf`` — at step 0 with a fresh LR schedule;
        ``moments`` as in the megatron engine (default: carried from logical checkpoints, with Adam's
        step). A grown checkpoint also continues its data position and growth masks."""
        path = checkpoint.resolve(path)
        meta = checkpoint.read_meta(path)
        carry = self._carry_moments(meta, moments)
        ds_checkpoint.load_into(path, self.entries, weights=True, moments=carry, require_moments=False)
        if carry:
            set_torch_adam_step(self.optimizer.optimizer, self.adam_step)
        self._continue_growth(meta)
        return meta
