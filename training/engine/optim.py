"""Optimizer and LR schedule: megatron-core's optimizer (AdamW, clipping, distributed optimizer)
and ``OptimizerParamScheduler`` (linear warmup, cosine/linear decay to a floor).

The Adam implementation is explicit (``train.optimizer_impl``): megatron-core picks Transformer
Engine's or Apex's FusedAdam whenever one is importable (NGC images), torch's AdamW otherwise.
``torch`` (the default) forces torch's AdamW everywhere, so that the per-parameter state growth
and ``load_moments`` map (``exp_avg``, ``exp_avg_sq``, ``step``) is what the optimizer uses;
``fused`` takes the FusedAdam and is refused where growth would have to carry its state.

Parameter groups (both engines, ``param_group_overrides``): megatron's standard ones (no weight
decay on biases and norms); under μP (``model.mup``) the hidden matrices (QKV, attention output,
FC1, FC2: the parameters the model marks ``hidden_matrix``) form their own group with
``max_lr = lr / m``, ``min_lr = min_lr / m`` and ``wd_mult = m`` (``lr_mult = 1 / m`` records the
ratio and keeps the group's identity distinct when megatron matches saved groups on resume).
megatron-core 0.16.1's ``OptimizerParamScheduler`` sets each group's LR from the group's own
``max_lr``/``min_lr`` (it does not read ``lr_mult``), so every step of warmup and decay keeps the
ratio ``1 / m``; the weight decay of a group is the schedule's times ``wd_mult``, so torch AdamW's
decay per step ``lr * weight_decay`` is the same for every width. A checkpoint carries its groups
(megatron engine) and a resumed run of the same config rebuilds the same ones (DeepSpeed engine); a
grown stage builds its optimizer from its own (wider) model, so its hidden LR is ``lr / m_new``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch
from megatron.core import optimizer as megatron_optimizer
from megatron.core.optimizer import OptimizerConfig, ParamKey, get_megatron_optimizer, get_standard_config_overrides
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler, ParamGroupOverride

from training.config import FUSED_ADAM_GROWTH, ModelConfig, TrainConfig
from training.engine.model.build import HIDDEN_MATRIX_ATTR
from training.errors import FLMError


class OptimizerChoiceError(FLMError, ValueError):
    """The chosen Adam implementation is unavailable, or growth cannot carry its state."""

    exit_code = 2


@contextlib.contextmanager
def _adam_implementation(impl: str) -> Iterator[None]:
    """megatron-core reads its module-level choice (``USING_PYTORCH_OPTIMIZER``) when it builds the
    optimizer; ``torch`` sets it for the build, ``fused`` requires that TE or Apex provided one."""
    fused_available = not megatron_optimizer.USING_PYTORCH_OPTIMIZER
    if impl == "fused":
        if not fused_available:
            raise OptimizerChoiceError(
                "train.optimizer_impl=fused needs Transformer Engine or Apex FusedAdam, "
                "and neither is importable here; use train.optimizer_impl=torch"
            )
        yield
        return
    saved = megatron_optimizer.USING_PYTORCH_OPTIMIZER
    megatron_optimizer.USING_PYTORCH_OPTIMIZER = True
    try:
        yield
    finally:
        megatron_optimizer.USING_PYTORCH_OPTIMIZER = saved


def check_growth_can_carry(train: TrainConfig) -> None:
    """Refuse to carry growth's optimizer state into a FusedAdam (``train.optimizer_impl=fused``)."""
    if train.optimizer_impl != "torch":
        raise OptimizerChoiceError(f"train.optimizer_impl={train.optimizer_impl}: {FUSED_ADAM_GROWTH}")


def param_group_overrides(model: ModelConfig, config: OptimizerConfig) -> Optional[dict[ParamKey, ParamGroupOverride]]:
    """megatron's parameter-group overrides for ``model``: None (megatron's standard groups) under the
    standard parametrisation; under μP the standard ones plus the hidden-matrix group (module
    docstring). At ``m = 1`` the hidden group would equal the default one (and megatron could not
    tell the two apart in a checkpoint), so none is added."""
    m = model.width_multiplier
    if model.mup is None or m == 1.0:
        return None
    overrides = get_standard_config_overrides(config)
    overrides[ParamKey(attr=HIDDEN_MATRIX_ATTR)] = ParamGroupOverride(
        max_lr=config.lr / m, min_lr=config.min_lr / m, wd_mult=m, lr_mult=1.0 / m
    )
    return overrides


def optimizer_config(train: TrainConfig, *, bf16: bool = False, distributed: bool = False) -> OptimizerConfig:
    """megatron's optimizer config of ``train`` (AdamW, clipping; mixed precision and the
    distributed optimizer for the megatron engine)."""
    return OptimizerConfig(
        optimizer="adam",
        lr=train.lr,
        min_lr=train.min_lr,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_eps=train.adam_eps,
        clip_grad=train.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=distributed,
    )


def build_optimizer(train: TrainConfig, model_chunks, *, bf16: bool, distributed: bool, model: ModelConfig):
    config = optimizer_config(train, bf16=bf16, distributed=distributed)
    with _adam_implementation(train.optimizer_impl):
        optimizer = get_megatron_optimizer(config, model_chunks, param_group_overrides(model, config))
    if train.optimizer_impl == "torch":
        kinds = {type(o) for o in inner_optimizers(optimizer)}
        if kinds != {torch.optim.AdamW}:
            raise OptimizerChoiceError(
                f"internal: train.optimizer_impl=torch built {sorted(k.__name__ for k in kinds)}"
            )
        init_adam_state(optimizer)
    return optimizer


def inner_optimizers(optimizer):
    """The torch optimizers inside a megatron (possibly chained) optimizer."""
    chained = getattr(optimizer, "chained_optimizers", None)
    return [o.optimizer for o in chained] if chained is not None else [optimizer.optimizer]


def init_adam_state(optimizer) -> None:
    """Give every parameter an explicit zero Adam state (step 0).

    torch's AdamW creates its state lazily at the first step; megatron-core 0.16.1's checkpoint
    loading (notably the distributed optimizer) assumes the state exists, and an explicit state
    makes "fresh" and "loaded" optimizers have the same structure. Zero moments at step 0 are
    exactly what AdamW would create.
    """
    for opt in inner_optimizers(optimizer):
        init_torch_adam_state(opt)


def client_adamw(groups: list[dict], train: TrainConfig, *, fused: bool) -> torch.optim.AdamW:
    """The DeepSpeed engine's client optimizer: torch's AdamW over ``groups`` with ``train``'s
    hyperparameters; ``fused``: torch's fused kernel (``training.engine.fusions.decide``), else
    torch's default implementation."""
    return torch.optim.AdamW(
        groups,
        lr=train.lr,
        betas=(train.adam_beta1, train.adam_beta2),
        eps=train.adam_eps,
        weight_decay=train.weight_decay,
        fused=True if fused else None,
    )


def _adam_step(opt: torch.optim.Optimizer, param: torch.Tensor, value: float) -> torch.Tensor:
    """A parameter's Adam ``step`` where ``opt``'s implementation keeps it: torch's fused AdamW on
    the parameter's device in float32 (as its own state and ``load_state_dict`` place it), the
    others a CPU scalar."""
    if opt.defaults.get("fused"):
        return torch.tensor(value, dtype=torch.float32, device=param.device)
    return torch.tensor(value)


def init_torch_adam_state(opt: torch.optim.Optimizer, params=None) -> None:
    """``init_adam_state`` for one torch optimizer (also the AdamW inside DeepSpeed's ZeRO optimizers);
    ``params`` default to the optimizer's parameter groups."""
    if params is None:
        params = [p for group in opt.param_groups for p in group["params"]]
    for p in params:
        if p not in opt.state or not opt.state[p]:
            opt.state[p] = {
                "step": _adam_step(opt, p, 0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }


def set_torch_adam_step(opt: torch.optim.Optimizer, step: int) -> None:
    """Adam's step (bias correction) of every parameter of ``opt``; each gets its own tensor
    (torch increments it in place per parameter)."""
    for param, state in opt.state.items():
        if "step" in state:
            state["step"] = _adam_step(opt, param, float(step))


class EnteredScheduler(OptimizerParamScheduler):
    """megatron's scheduler entered at step ``offset`` of its schedule, with an optional linear
    re-warmup over the first ``rewarmup_steps`` steps after the entry (a grown stage of a run-level
    schedule). ``num_steps`` counts from the schedule's start, so checkpoints resume it exactly."""

    def __init__(self, optimizer, *, offset: int, rewarmup_steps: int, **kwargs) -> None:
        self.offset, self.rewarmup_steps = offset, rewarmup_steps
        super().__init__(optimizer, **kwargs)
        if offset:
            self.step(increment=offset)

    def load_state_dict(self, state_dict: dict) -> None:
        # megatron's loader adds the saved step count to the current one (it expects a fresh
        # scheduler at step 0); the saved count already includes the entry offset
        self.num_steps = 0
        super().load_state_dict(state_dict)

    def get_lr(self, param_group: dict) -> float:
        lr = super().get_lr(param_group)
        if self.rewarmup_steps:
            lr *= min(1.0, (self.num_steps - self.offset) / self.rewarmup_steps)
        return lr


def build_scheduler(train: TrainConfig, optimizer) -> OptimizerParamScheduler:
    """LR at optimizer step ``n`` (1-based) of this run: the schedule's value at step
    ``schedule_offset_steps + n`` — linear warmup to ``lr`` over ``warmup_steps``, then decay
    (cosine/linear/constant) to ``min_lr`` at ``lr_decay_steps`` (default: ``steps``) — times a
    linear re-warmup over the first ``rewarmup_steps`` steps."""
    decay_steps = train.lr_decay_steps or train.steps
    return EnteredScheduler(
        optimizer,
        offset=train.schedule_offset_steps,
        rewarmup_steps=train.rewarmup_steps,
        init_lr=0.0,
        max_lr=train.lr,
        min_lr=train.min_lr,
        lr_warmup_steps=train.warmup_steps,
        lr_decay_steps=max(decay_steps, train.warmup_steps + 1),
        lr_decay_style=train.lr_decay_style,
        start_wd=train.weight_decay,
        end_wd=train.weight_decay,
        wd_incr_steps=max(decay_steps, 1),
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
    )


class _NoParams:
    """What megatron's scheduler touches of an optimizer when nothing is trained: param_groups."""

    param_groups: list = []


def stage_start_lr(train: TrainConfig, *, first: bool) -> float:
    """The LR a stage starts at, by the scheduler the trainer builds (``build_scheduler``): the first
    stage's peak, reached at the end of its warmup; a grown stage's value where it enters the
    schedule (step ``schedule_offset_steps + 1``), which its re-warmup rises to."""
    sched = build_scheduler(train, _NoParams())
    sched.num_steps = max(train.warmup_steps, 1) if first else train.schedule_offset_steps + 1
    return OptimizerParamScheduler.get_lr(sched, {})
