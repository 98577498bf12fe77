"""Run megatron-core on machines without CUDA (gloo + CPU), and only there.

megatron-core has no CPU path: a few dozen places allocate on ``"cuda"`` or on
``torch.cuda.current_device()``, assert ``tensor.type() == 'torch.cuda.FloatTensor'``, call
``.cuda()`` or ``torch.cuda.synchronize()``, and keep the tensor-parallel RNG states in CUDA
generators (details in ``docs/megatron-on-cpu.md`` of the shared docs). Monkeypatching those call
sites one by one would touch torch globally; instead this module installs an import hook that
rewrites the *source* of a fixed list of megatron-core modules as they are imported, replacing each
CUDA idiom by its CPU equivalent. Each module lists the rewrites it needs, and every rewrite must
match at least once: if an upgrade of megatron-core moves the code, ``install()`` fails loudly
with the module and the pattern, rather than silently running unpatched code
(``tests/training/engine/test_cpu_bridge.py`` checks this against the installed version).

Nothing is patched when CUDA is available: ``install()`` is a no-op there.

The rule: every rewrite substitutes a CUDA idiom by its CPU equivalent, nothing else. A behaviour
fix hidden here would run on CPU only, so the CPU tests would pass while GPUs run the unfixed code;
such fixes belong in the project's own code (e.g. the distributed optimizer's torch-Adam ``step``
in ``training.engine.megatron_checkpoint``). ``tests/training/engine/test_cpu_bridge.py`` lists the
rewrites and checks each one replaces a CUDA idiom.

The hook must be installed before ``megatron.core`` is imported; every project module that imports
megatron lives in ``training.engine``, whose ``__init__`` calls ``install()``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from dataclasses import dataclass

import torch

from training.errors import FLMError

#: megatron-core releases this bridge was written and tested against.
TESTED_MEGATRON_CORE = ("0.16.1",)


class BridgeError(FLMError, RuntimeError):
    """The installed megatron-core does not match what the CPU bridge expects."""


@dataclass(frozen=True)
class Rewrite:
    old: str
    new: str


# Rewrites shared by many modules.
DEVICE_CURRENT = Rewrite("torch.cuda.current_device()", 'torch.device("cpu")')
DEVICE_STR_DQ = Rewrite('device="cuda"', 'device="cpu"')
DEVICE_STR_SQ = Rewrite("device='cuda'", "device='cpu'")
FLOAT_TYPE = Rewrite("'torch.cuda.FloatTensor'", "'torch.FloatTensor'")
BF16_TYPE = Rewrite("'torch.cuda.BFloat16Tensor'", "'torch.BFloat16Tensor'")
HALF_TYPE = Rewrite("'torch.cuda.HalfTensor'", "'torch.HalfTensor'")
DOT_CUDA = Rewrite(".cuda()", ".cpu()")
SYNC = Rewrite("torch.cuda.synchronize()", "None")

#: module -> rewrites; every rewrite must match at least once in that module's source.
MODULE_REWRITES: dict[str, tuple[Rewrite, ...]] = {
    "megatron.core.utils": (DEVICE_CURRENT, DEVICE_STR_DQ),
    "megatron.core.pipeline_parallel.schedules": (DEVICE_STR_DQ,),
    "megatron.core.pipeline_parallel.p2p_communication": (DEVICE_CURRENT, SYNC),
    "megatron.core.tensor_parallel.layers": (DEVICE_CURRENT,),
    "megatron.core.tensor_parallel.mappings": (DEVICE_CURRENT,),
    "megatron.core.tensor_parallel.random": (
        Rewrite("torch.cuda.get_rng_state()", "torch.get_rng_state()"),
        Rewrite("torch.cuda.manual_seed(seed)", "torch.manual_seed(seed)"),
    ),
    "megatron.core.optimizer.clip_grads": (DEVICE_STR_SQ, FLOAT_TYPE),
    "megatron.core.optimizer.optimizer": (DEVICE_STR_SQ, FLOAT_TYPE, BF16_TYPE, HALF_TYPE, DOT_CUDA),
    "megatron.core.optimizer.distrib_optimizer": (DEVICE_CURRENT, FLOAT_TYPE, BF16_TYPE, HALF_TYPE, DOT_CUDA),
    "megatron.core.optimizer.grad_scaler": (DEVICE_STR_SQ,),
    "megatron.core.distributed.param_and_grad_buffer": (DEVICE_CURRENT, DEVICE_STR_DQ),
    "megatron.core.distributed.distributed_data_parallel": (DEVICE_CURRENT,),
    "megatron.core.models.common.embeddings.rotary_pos_embedding": (DEVICE_CURRENT,),
    "megatron.core.transformer.utils": (DEVICE_STR_DQ,),
    "megatron.core.models.common.language_module.language_module": (DOT_CUDA,),
    "megatron.core.dist_checkpointing.strategies.filesystem_async": (SYNC,),
    "megatron.core.dist_checkpointing.strategies.state_dict_saver": (DEVICE_STR_SQ, DEVICE_CURRENT),
}


def _post_load_random(module) -> None:
    """The RNG tracker keeps CPU generator states instead of CUDA ones."""

    def get_state(device="cuda", clone=False, graph_safe=False):
        state = torch.get_rng_state()
        return state.clone() if clone else state

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    module._get_cuda_rng_state = get_state
    module._set_cuda_rng_state = set_state


POST_LOAD = {"megatron.core.tensor_parallel.random": _post_load_random}

_applied: dict[str, dict[Rewrite, int]] = {}


class _RewritingLoader(importlib.machinery.SourceFileLoader):
    def source_to_code(self, data, path, *, _optimize=-1):  # type: ignore[override]
        source = data.decode("utf-8") if isinstance(data, bytes) else data
        counts = {}
        for rewrite in MODULE_REWRITES[self.name]:
            counts[rewrite] = source.count(rewrite.old)
            if counts[rewrite] == 0:
                raise BridgeError(
                    f"CPU bridge: pattern {rewrite.old!r} not found in {self.name} ({path}); the installed "
                    f"megatron-core differs from the tested versions {TESTED_MEGATRON_CORE}. Install "
                    f"one of them (pip install megatron-core=={TESTED_MEGATRON_CORE[-1]}) or update "
                    "training/engine/cpu_bridge.py."
                )
            source = source.replace(rewrite.old, rewrite.new)
        _applied[self.name] = counts
        return compile(source, path, "exec", dont_inherit=True)

    def get_code(self, fullname):  # never use the cached .pyc of the unpatched source
        source = self.get_data(self.get_filename(fullname))
        return self.source_to_code(source, self.get_filename(fullname))

    def exec_module(self, module):
        super().exec_module(module)
        hook = POST_LOAD.get(self.name)
        if hook is not None:
            hook(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in MODULE_REWRITES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            raise BridgeError(f"CPU bridge: {fullname} is not loaded from source; cannot patch it")
        spec.loader = _RewritingLoader(fullname, spec.origin)
        return spec


_FINDER = _Finder()


def needed() -> bool:
    """The bridge is used exactly when CUDA is not available."""
    return not torch.cuda.is_available()


def install() -> bool:
    """Install the import hook (idempotent). Returns True when the bridge is active."""
    if not needed():
        return False
    if _FINDER in sys.meta_path:
        return True
    loaded_unpatched = [m for m in MODULE_REWRITES if m in sys.modules and m not in _applied]
    if loaded_unpatched:
        raise BridgeError(
            "CPU bridge: megatron-core was imported before the bridge was installed "
            f"({', '.join(loaded_unpatched)}); import training.engine before megatron.core."
        )
    sys.meta_path.insert(0, _FINDER)
    return True


def check_fit() -> dict[str, dict[str, int]]:
    """Import every patched module and return {module: {pattern: matches}}; raises BridgeError."""
    install()

    for name in MODULE_REWRITES:
        importlib.import_module(name)
    return {m: {r.old: n for r, n in counts.items()} for m, counts in _applied.items()}
