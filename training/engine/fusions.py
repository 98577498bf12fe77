"""Which fused kernels a process trains with: torch's fused AdamW and megatron-core's fusions.

``decide`` is the one place that chooses. Contract: on a process that does not compute on CUDA
every fusion is off (CPU runs take exactly the unfused code). On CUDA a fusion is on exactly when
(1) the kernel it needs is present on this machine (``probe``: nothing is installed or compiled
for it) and (2) the fused path computes the same function as the unfused one for this model and
engine, so a run's losses do not depend on the choice beyond floating-point rounding:

- ``adamw`` — ``torch.optim.AdamW(fused=True)`` for the DeepSpeed engine's client optimizer (the
  AdamW the project builds itself; under ``deepspeed.offload_optimizer`` the update runs on the CPU:
  off). megatron-core 0.16.1 builds its torch AdamW itself and its ``OptimizerConfig`` has no switch
  for torch's fused kernel, so the megatron engine keeps torch's default (foreach on CUDA).
- ``bias_swiglu`` — megatron's ``bias_activation_fusion`` for SwiGLU models (``bias_swiglu_impl``,
  compiled by ``torch.compile``, which needs Triton on CUDA). Never for GELU models: megatron's
  fused bias-GELU is the tanh approximation of GELU, another function than the model's exact GELU.
- ``bias_dropout_add`` — megatron's ``bias_dropout_fusion`` (``torch.compile``, Triton).
- ``masked_softmax`` — megatron's ``masked_softmax_fusion`` (the ``scaled_*masked_softmax_cuda``
  kernels of an Apex / Megatron build) for ``train.attention: unfused``; the default fused
  attention (SDPA) has no separate softmax to fuse.
- ``gradient_accumulation`` — megatron's ``gradient_accumulation_fusion`` (Apex's
  ``fused_weight_gradient_mlp_cuda``: weight gradients accumulated straight into megatron DDP's
  fp32 ``main_grad``); megatron engine only (the DeepSpeed engine has no ``main_grad``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from training.config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class KernelsPresent:
    """What this machine provides for the fusions (``probe``)."""

    #: torch's fused AdamW kernel for CUDA tensors
    fused_adamw_cuda: bool
    #: Triton: ``torch.compile``'s CUDA backend, which megatron's ``jit_fuser`` fusions compile with
    triton: bool
    #: megatron's fused masked-softmax CUDA kernels
    masked_softmax: bool
    #: Apex's fused weight-gradient accumulation kernel
    wgrad_accumulation: bool


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def probe() -> KernelsPresent:
    """What is importable in this process (nothing is imported, built or run)."""
    return KernelsPresent(
        fused_adamw_cuda="cuda" in _get_fused_kernels_supported_devices(),
        triton=_importable("triton"),
        masked_softmax=_importable("scaled_upper_triang_masked_softmax_cuda")
        and _importable("scaled_masked_softmax_cuda"),
        wgrad_accumulation=_importable("fused_weight_gradient_mlp_cuda"),
    )


@dataclass(frozen=True)
class Fusions:
    """The fusions a process uses (``decide``); all off by default."""

    adamw: bool = False
    bias_swiglu: bool = False
    bias_dropout_add: bool = False
    masked_softmax: bool = False
    gradient_accumulation: bool = False

    def transformer_config_kwargs(self) -> dict[str, Any]:
        """megatron's ``TransformerConfig`` fields these settings decide."""
        return {
            "bias_activation_fusion": self.bias_swiglu,
            "bias_dropout_fusion": self.bias_dropout_add,
            "masked_softmax_fusion": self.masked_softmax,
            "gradient_accumulation_fusion": self.gradient_accumulation,
        }

    def summary(self) -> str:
        on = [f.name for f in fields(self) if getattr(self, f.name)]
        return "fused kernels: " + (", ".join(on) if on else "none")


OFF = Fusions()


def decide(
    model: ModelConfig,
    train: TrainConfig,
    *,
    engine: str,
    device: torch.device,
    offload_optimizer: bool = False,
    present: Optional[KernelsPresent] = None,
) -> Fusions:
    """The fusions for ``model`` trained by ``engine`` on ``device`` (module docstring: off on
    anything but CUDA; on CUDA each exactly when its kernel is ``present`` — default ``probe()`` —
    and it computes the model's own function)."""
    if device.type != "cuda":
        return OFF
    have = present or probe()
    decided = Fusions(
        adamw=engine == "deepspeed" and not offload_optimizer and have.fused_adamw_cuda,
        bias_swiglu=model.activation == "swiglu" and have.triton,
        bias_dropout_add=have.triton,
        masked_softmax=train.attention == "unfused" and have.masked_softmax,
        gradient_accumulation=engine == "megatron" and have.wgrad_accumulation,
    )
    return decided
