"""Metrics: MFU and the sinks (JSONL, TensorBoard, progress bar) of the logging rank."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from training.devices import PEAK_TFLOPS


def peak_tflops_of(device_name: str) -> Optional[float]:
    """Dense bf16 peak TFLOP/s of a GPU by its name (``torch.cuda.get_device_name()``, e.g.
    ``NVIDIA H100 80GB HBM3``), from ``PEAK_TFLOPS``; None for an unknown device. The longest
    matching key wins (``H200`` before ``H20``)."""
    matches = [key for key in PEAK_TFLOPS if key in device_name]
    return PEAK_TFLOPS[max(matches, key=len)] if matches else None


def device_peak_tflops(override: Optional[float]) -> Optional[float]:
    """The peak MFU is measured against: ``logging.peak_tflops`` when set, else this process's GPU's
    (``peak_tflops_of``); None on CPU (MFU is then not reported)."""
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    return peak_tflops_of(torch.cuda.get_device_name())


def truncate_jsonl(path: Path, after_step: int) -> int:
    """Drop the records of steps after ``after_step`` (and a torn last line) from a metrics file,
    atomically; returns how many lines were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            dropped += 1
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) > after_step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped


class MetricsSink:
    """Writes metrics on the logging rank only; other ranks get a no-op sink."""

    def __init__(
        self,
        out_dir: Optional[Path],
        *,
        tensorboard: bool,
        progress_total: Optional[int],
        progress_initial: int = 0,
        resume_step: Optional[int] = None,
    ):
        """``resume_step``: the step the run continues after; records of later steps (written by the
        interrupted run before its last checkpoint was superseded) are dropped from metrics.jsonl and
        TensorBoard, so every step appears once."""
        self.enabled = out_dir is not None
        self._jsonl = None
        self._tb = None
        self._bar = None
        if not self.enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_jsonl(out_dir / "metrics.jsonl", resume_step)
        self._jsonl = open(out_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            # optional heavy dependency: tensorboard loads only where logging.tensorboard is on
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=purge)
        if progress_total is not None:
            self._bar = tqdm(total=progress_total, initial=progress_initial, unit="step", dynamic_ncols=True)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._bar is not None and "loss" in record:
            post = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record.get('tokens_per_s', 0):.0f}"}
            if record.get("mfu") is not None:
                post["mfu"] = f"{100 * record['mfu']:.1f}%"
            self._bar.set_postfix(post, refresh=False)
            # records come every log_interval steps: move the bar to the record's step
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
