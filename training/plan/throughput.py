"""FLOPs per token, throughput sources, tokens per day.

Time is counted in *model* FLOPs: ``training.model_size.flops_per_token`` = 6 x matmul parameters
+ 12·L·s·d·heads (forward + backward; Megatron's formula without the recompute term), the same
number the trainer's TFLOP/s and MFU use. Recomputation executes more (full recomputation runs
the forward twice: 8 x params + 16·L·s·d·heads, ``hardware_flops_per_token``) but trains nothing
more, so a TFLOP/s or MFU figure must be a model-FLOPs figure for the days to come out right.
FLM-101B's own numbers settle which one its 165 TFLOP/s is: with model FLOPs its 101B stage
takes 6.11 days against the paper's 6.54 (-6.6%), with the recompute count 8.15 days (+24.6%);
see docs/cluster.md.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from training.config import ModelConfig
from training.errors import FLMError
from training.model_size import flops_per_token, matmul_params

SECONDS_PER_DAY = 86400.0


def model_flops_per_token(model: ModelConfig) -> float:
    return flops_per_token(model)


def hardware_flops_per_token(model: ModelConfig) -> float:
    """FLOPs executed per token with full activation recomputation (forward run twice)."""
    attn = 16 * model.num_layers * model.seq_length * model.head_dim * model.num_attention_heads
    return 8.0 * matmul_params(model) + attn


@dataclass(frozen=True)
class Throughput:
    """Achieved model TFLOP/s per GPU and where the figure came from."""

    tflops: float
    peak_tflops: float
    source: str

    @property
    def mfu(self) -> float:
        return self.tflops / self.peak_tflops


def tokens_per_day(flops_token: float, gpus: int, tflops: float) -> float:
    return gpus * tflops * 1e12 * SECONDS_PER_DAY / flops_token


class MeasuredError(FLMError, ValueError):
    """A metrics file cannot give a measured MFU; the message names the file and the fix."""


def measured_mfu(path: Path) -> float:
    """Median MFU of the step records of a ``metrics.jsonl`` (the first step, which pays for
    warm-up, is left out when there are more). The trainer writes ``mfu`` only where the
    device's peak is known (a known GPU, or ``logging.peak_tflops``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise MeasuredError(f"no metrics file at {path}; pass the metrics.jsonl or the run/stage directory holding it")
    values = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("mfu") is not None and "loss" in record:
            values.append(float(record["mfu"]))
    if len(values) > 1:
        values = values[1:]
    if not values:
        raise MeasuredError(
            f"{path} has no step records with an 'mfu' value (the device's peak was unknown); "
            "train with logging.peak_tflops=<peak TFLOP/s> or pass --mfu/--tflops instead"
        )
    return statistics.median(values)
