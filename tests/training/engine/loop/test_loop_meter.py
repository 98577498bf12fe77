"""The step meter (training/engine/loop/meter.py): the metrics record of a step, its throughput and MFU."""

from __future__ import annotations

import pytest

from training.config import LoggingConfig, ModelConfig, RunConfig, TrainConfig
from training.engine.loop.meter import StepMeter
from training.engine.loop.step_result import StepResult
from training.model_size import flops_per_token

MODEL = ModelConfig(
    num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, vocab_size=512, seq_length=64
)


def _cfg(peak_tflops):
    return RunConfig(
        model=MODEL, train=TrainConfig(global_batch_size=8), logging=LoggingConfig(peak_tflops=peak_tflops)
    )


def test_record_keys_in_order_with_throughput_and_mfu():
    meter = StepMeter(_cfg(peak_tflops=2.0), world_size=4)
    result = StepResult(step=3, loss=2.5, grad_norm=0.7, lr=1e-3, skipped=True)
    extra = {"skip_reason": "spike", "consecutive_skips": 1, "spike_loss": 9.0}
    record = meter.record(result, step_time_s=0.5, consumed_samples=24, mask_value=0.25, extra=extra)
    assert list(record) == [
        "step",
        "loss",
        "lr",
        "grad_norm",
        "skipped",
        "consumed_samples",
        "tokens",
        "step_time_s",
        "tokens_per_s",
        "mask_value",
        "skip_reason",
        "consecutive_skips",
        "spike_loss",
        "tflops_per_device",
        "mfu",
    ]
    tokens_per_s = 8 * 64 / 0.5
    tflops = tokens_per_s * flops_per_token(MODEL) / 4 / 1e12
    assert record["step"] == 3 and record["loss"] == 2.5 and record["lr"] == 1e-3 and record["grad_norm"] == 0.7
    assert record["skipped"] is True and record["mask_value"] == 0.25
    assert record["consumed_samples"] == 24 and record["tokens"] == 24 * 64
    assert record["step_time_s"] == 0.5 and record["tokens_per_s"] == tokens_per_s
    assert record["tflops_per_device"] == pytest.approx(tflops, rel=1e-12)
    assert record["mfu"] == pytest.approx(tflops / 2.0, rel=1e-12)
    assert record["spike_loss"] == 9.0


def test_no_mfu_without_a_known_peak(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a CPU: no peak table entry
    meter = StepMeter(_cfg(peak_tflops=None), world_size=1)
    record = meter.record(
        StepResult(step=1, loss=1.0, grad_norm=None, lr=0.1, skipped=False),
        step_time_s=2.0,
        consumed_samples=8,
        mask_value=None,
        extra={},
    )
    assert record["mfu"] is None and record["tflops_per_device"] > 0
    assert "skip_reason" not in record and record["grad_norm"] is None and record["mask_value"] is None
