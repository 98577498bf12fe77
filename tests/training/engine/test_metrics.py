"""The metrics sink: records in metrics.jsonl, and a progress bar that follows the steps."""

from __future__ import annotations

import json

from training.engine.metrics import MetricsSink


def test_progress_bar_counts_steps_not_records(tmp_path):
    """With log_interval 5 only every fifth step is a record; the bar still ends at the last step."""
    sink = MetricsSink(tmp_path, tensorboard=False, progress_total=10, progress_initial=0)
    try:
        for step in (5, 10):
            sink.log({"step": step, "loss": 1.0, "tokens_per_s": 1.0})
        assert sink._bar.n == 10
    finally:
        sink.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [5, 10]


def test_progress_bar_starts_at_the_resumed_step(tmp_path):
    sink = MetricsSink(tmp_path, tensorboard=False, progress_total=12, progress_initial=6)
    try:
        sink.log({"step": 9, "loss": 1.0, "tokens_per_s": 1.0})
        assert sink._bar.n == 9
    finally:
        sink.close()


def test_peak_table_matches_device_names():
    from training.engine.metrics import peak_tflops_of

    assert peak_tflops_of("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops_of("NVIDIA H200") == 989.0
    assert peak_tflops_of("NVIDIA H20") == 148.0
    assert peak_tflops_of("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops_of("NVIDIA A800 80GB PCIe") == 312.0
    assert peak_tflops_of("Tesla V100") is None


def test_mfu_uses_the_model_flops_formula():
    from training.config import ModelConfig
    from training.model_size import flops_per_token, matmul_params

    m = ModelConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, vocab_size=512, seq_length=64
    )
    assert flops_per_token(m) == 6.0 * matmul_params(m) + 12 * 2 * 64 * 64
