"""Accelerator facts the project needs without torch: dense bf16 peak TFLOP/s per device kind."""

from __future__ import annotations

#: dense bf16 peak TFLOP/s per device, for MFU (``training.engine.metrics``) and the planner
#: (``training.plan.hardware``); CPUs have no entry (MFU is then not reported unless
#: logging.peak_tflops is set)
PEAK_TFLOPS = {"A100": 312.0, "A800": 312.0, "H100": 989.0, "H800": 989.0, "H200": 989.0, "H20": 148.0}
