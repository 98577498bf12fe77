"""The engines: megatron-core (TP/PP/DP) and DeepSpeed ZeRO over the project's GPT model.

Every project module that imports megatron-core lives in this package, so importing it first
installs the CPU bridge (``training.engine.cpu_bridge``) where CUDA is absent; on CUDA machines
``install()`` does nothing.
"""

from training.engine import cpu_bridge as _cpu_bridge

_cpu_bridge.install()
