"""GPU kinds the planner knows: usable memory and dense bf16 peak.

Memory is what ``nvidia-smi`` reports as total for the 80 GB / 141 GB parts (81920 MiB for
A100/A800 80GB, 81559 MiB for H100 SXM 80GB, 143771 MiB for H200 141GB); peaks are the dense
(no sparsity) bf16 tensor-core figures of ``training.devices.PEAK_TFLOPS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.devices import PEAK_TFLOPS

MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator kind. ``memory_bytes`` is the device total; ``peak_tflops`` dense bf16."""

    key: str
    name: str
    memory_bytes: int
    peak_tflops: float

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


GPUS: dict[str, GpuSpec] = {
    "a800": GpuSpec("a800", "A800 80GB", 81920 * MIB, PEAK_TFLOPS["A800"]),
    "a100": GpuSpec("a100", "A100 80GB", 81920 * MIB, PEAK_TFLOPS["A100"]),
    "h100": GpuSpec("h100", "H100 80GB", 81559 * MIB, PEAK_TFLOPS["H100"]),
    "h200": GpuSpec("h200", "H200 141GB", 143771 * MIB, PEAK_TFLOPS["H200"]),
}


def gpu_spec(key: str) -> GpuSpec:
    """The spec of ``key`` (case-insensitive); ValueError lists the known kinds."""
    try:
        return GPUS[key.lower()]
    except KeyError:
        raise ValueError(f"unknown GPU type {key!r}; known: {', '.join(GPUS)}") from None
