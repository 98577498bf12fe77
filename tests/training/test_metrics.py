"""The metrics sink: records in metrics.jsonl, and a progress bar that follows the steps."""

from __future__ import annotations

import json

from training.metrics import MetricsSink


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
