"""megatron-core's ``jit_fuser`` compiles on first call instead of at import.

megatron-core 0.16.1 sets ``megatron.core.jit.jit_fuser = torch.compile`` and decorates ~40
functions with it at import time (fused bias-GeLU/SwiGLU/dropout, activations, norms). Calling
``torch.compile(fn)`` imports ``torch._dynamo`` and ``torch._inductor`` (about 2 s of CPU per
process) even in processes that never call one of those functions: every ``flm`` worker on CPU
(``training.engine.fusions`` keeps every fusion off there), ``flm grow``, ``flm export-hf``.

``install()`` makes ``jit_fuser`` a decorator that calls ``torch.compile(fn)`` the first time the
decorated function is called and the compiled function from then on. ``torch.compile`` itself
compiles nothing until the first call, so the function that runs is the same on every device: the
same ``torch.compile(fn)`` with the same defaults, made a call later. Only the import is saved.
Where megatron-core's ``jit_fuser`` is not ``torch.compile`` (other versions: ``torch.jit.script``
or a no-op), it is left as it is.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from typing import Any

import torch

_MODULE = "megatron.core.jit"


def lazy_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` wrapped so that ``torch.compile(fn)`` is made on the first call and used for every call."""
    compiled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal compiled
        if compiled is None:
            compiled = torch.compile(fn)
        return compiled(*args, **kwargs)

    return call


def _make_lazy(module: Any) -> None:
    if module.jit_fuser is torch.compile:
        module.jit_fuser = lazy_compile


class _Loader(importlib.machinery.SourceFileLoader):
    def exec_module(self, module: Any) -> None:
        super().exec_module(module)
        _make_lazy(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = _Loader(fullname, spec.origin)
        return spec


_FINDER = _Finder()


def install() -> None:
    """Make ``jit_fuser`` lazy in every megatron-core module imported from now on (idempotent).
    Modules already imported keep the functions they compiled (``megatron.core.jit`` loaded before
    this call: its ``jit_fuser`` is made lazy for the modules still to come)."""
    if _MODULE in sys.modules:
        _make_lazy(sys.modules[_MODULE])
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
