"""megatron-core's ``jit_fuser`` made lazy (``training.engine.lazy_jit``): the same
``torch.compile(fn)``, made on the first call instead of at import."""

from __future__ import annotations

import megatron.core.jit
import torch
from megatron.core.fusions import fused_bias_swiglu

from training.engine import lazy_jit


def test_megatron_decorates_its_fusions_with_the_lazy_compile():
    assert megatron.core.jit.jit_fuser is lazy_jit.lazy_compile
    fn = fused_bias_swiglu.swiglu
    assert fn.__wrapped__.__name__ == "swiglu" and fn.__code__ is lazy_jit.lazy_compile(abs).__code__


def test_compiles_on_the_first_call_once_and_returns_the_compiled_result(monkeypatch):
    made = []

    def fake_compile(fn):
        made.append(fn)
        return lambda *args, **kwargs: ("compiled", fn(*args, **kwargs))

    monkeypatch.setattr(torch, "compile", fake_compile)

    def double(x, *, by=2):
        return x * by

    lazy = lazy_jit.lazy_compile(double)
    assert made == [] and lazy.__name__ == "double" and lazy.__wrapped__ is double
    assert lazy(3) == ("compiled", 6) and lazy(3, by=3) == ("compiled", 9)
    assert made == [double]


def test_a_jit_fuser_other_than_torch_compile_is_left_alone(monkeypatch):
    class Module:
        jit_fuser = staticmethod(torch.jit.script)

    lazy_jit._make_lazy(Module)
    assert Module.jit_fuser is torch.jit.script
