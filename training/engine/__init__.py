"""The engines: megatron-core (TP/PP/DP) and DeepSpeed ZeRO over the project's GPT model.

Every project module that imports megatron-core lives in this package, so importing it first
installs the CPU bridge (``training.engine.cpu_bridge``) where CUDA is absent (on CUDA machines
``install()`` does nothing) and, on every machine, makes megatron's ``jit_fuser`` compile on first
call instead of at import (``training.engine.lazy_jit``: the same compiled functions, ~2 s less
startup per process).
"""

from training.engine import cpu_bridge as _cpu_bridge
from training.engine import lazy_jit as _lazy_jit

_cpu_bridge.install()
_lazy_jit.install()
