"""The training engine: configs, the megatron-core model, parallel setup, loop and checkpoints.

Importing this package installs the CPU bridge for megatron-core when CUDA is absent (see
``training.cpu_bridge``), so it must be imported before ``megatron.core``.
"""

from training import cpu_bridge as _cpu_bridge

_cpu_bridge.install()
