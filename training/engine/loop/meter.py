"""The step meter: one metrics record per optimizer step, with its throughput and MFU."""

from __future__ import annotations

from typing import Any, Optional

from training.config import RunConfig
from training.engine.loop.step_result import StepResult
from training.engine.metrics import device_peak_tflops
from training.model_size import flops_per_token


class StepMeter:
    """Builds the record ``fit`` logs for a step (``metrics.jsonl``, TensorBoard).

    Keys, in order: ``step loss lr grad_norm skipped consumed_samples tokens step_time_s
    tokens_per_s mask_value``, then the caller's ``extra`` fields (the divergence guard's), then
    ``tflops_per_device`` (model FLOPs per second of one device of ``world_size``) and ``mfu``
    (that over the device's peak; None where the peak is unknown, e.g. CPUs).
    """

    def __init__(self, cfg: RunConfig, world_size: int):
        self.seq_length = cfg.model.seq_length
        self.tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
        self.world_size = world_size
        self.flops_per_token = flops_per_token(cfg.model)
        self.peak = device_peak_tflops(cfg.logging.peak_tflops)

    def record(
        self,
        result: StepResult,
        *,
        step_time_s: float,
        consumed_samples: int,
        mask_value: Optional[float],
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "step": result.step,
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "skipped": result.skipped,
            "consumed_samples": consumed_samples,
            "tokens": consumed_samples * self.seq_length,
            "step_time_s": step_time_s,
            "tokens_per_s": self.tokens_per_step / step_time_s,
            "mask_value": mask_value,
        }
        record.update(extra)
        achieved = record["tokens_per_s"] * self.flops_per_token / self.world_size / 1e12
        record["tflops_per_device"] = achieved
        record["mfu"] = achieved / self.peak if self.peak else None
        return record
