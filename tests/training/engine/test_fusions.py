"""The fusion decision (``training.engine.fusions.decide``): off on CPU; on CUDA each fusion exactly
when its kernel is present and the fused path computes the model's function. On CPU the code paths
that can run here are checked equal to the unfused ones: megatron's bias-SwiGLU and bias-dropout-add
fusions (their compiled functions run eagerly) and torch's fused AdamW as the DeepSpeed engine
builds it; megatron's fused bias-GELU is shown to be another function (why it is never chosen)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.growth.helpers import make_cfg, random_state, tokens
from training.config import ParallelConfig, TrainConfig
from training.engine.fusions import OFF, Fusions, KernelsPresent, decide
from training.engine.model.state import load_logical_state_dict
from training.engine.optim import client_adamw, init_torch_adam_state, set_torch_adam_step
from training.engine.parallel import process_device

ALL = KernelsPresent(fused_adamw_cuda=True, triton=True, masked_softmax=True, wgrad_accumulation=True)
NONE = KernelsPresent(fused_adamw_cuda=False, triton=False, masked_softmax=False, wgrad_accumulation=False)
CUDA = torch.device("cuda")
SWIGLU = make_cfg(activation="swiglu")
GELU = make_cfg(activation="gelu", bias=True)


def test_off_on_cpu_whatever_is_installed():
    assert process_device().type == "cpu"
    for engine in ("megatron", "deepspeed"):
        assert decide(SWIGLU, TrainConfig(attention="unfused"), engine=engine, device=process_device()) == OFF
        assert decide(SWIGLU, TrainConfig(), engine=engine, device=torch.device("cpu"), present=ALL) == OFF


@pytest.mark.parametrize(
    ("model", "train", "engine", "offload", "present", "expected"),
    [
        (
            SWIGLU,
            TrainConfig(),
            "megatron",
            False,
            ALL,
            Fusions(bias_swiglu=True, bias_dropout_add=True, gradient_accumulation=True),
        ),
        (GELU, TrainConfig(), "megatron", False, ALL, Fusions(bias_dropout_add=True, gradient_accumulation=True)),
        (
            GELU,
            TrainConfig(attention="unfused"),
            "megatron",
            False,
            ALL,
            Fusions(bias_dropout_add=True, masked_softmax=True, gradient_accumulation=True),
        ),
        (SWIGLU, TrainConfig(), "deepspeed", False, ALL, Fusions(adamw=True, bias_swiglu=True, bias_dropout_add=True)),
        (GELU, TrainConfig(), "deepspeed", True, ALL, Fusions(bias_dropout_add=True)),
        (SWIGLU, TrainConfig(attention="unfused"), "megatron", False, NONE, OFF),
        (
            SWIGLU,
            TrainConfig(),
            "deepspeed",
            False,
            dataclasses.replace(NONE, fused_adamw_cuda=True),
            Fusions(adamw=True),
        ),
    ],
)
def test_on_cuda_each_fusion_follows_its_kernel_and_the_model(model, train, engine, offload, present, expected):
    assert decide(model, train, engine=engine, device=CUDA, offload_optimizer=offload, present=present) == expected


def test_the_settings_go_into_megatrons_config():
    from training.engine.model.build import transformer_config

    fused = Fusions(bias_swiglu=True, bias_dropout_add=True, masked_softmax=True)
    config = transformer_config(SWIGLU, ParallelConfig(), bf16=False, gloo=True, fusions=fused)
    assert (config.bias_activation_fusion, config.bias_dropout_fusion, config.masked_softmax_fusion) == (True,) * 3
    assert not config.gradient_accumulation_fusion
    plain = transformer_config(SWIGLU, ParallelConfig(), bf16=False, gloo=True)
    assert not (plain.bias_activation_fusion or plain.bias_dropout_fusion or plain.masked_softmax_fusion)


@pytest.fixture(scope="module")
def build():
    from training.engine.model.build import build_model, transformer_config
    from training.engine.parallel import setup_layout

    setup_layout(ParallelConfig(), 1234)

    def make(cfg, fusions):
        (chunk,) = build_model(cfg, transformer_config(cfg, ParallelConfig(), bf16=False, gloo=True, fusions=fusions))
        load_logical_state_dict(chunk, random_state(cfg, dtype=torch.float32))
        return chunk

    return make


def _loss_and_grads(chunk, toks):
    chunk.zero_grad(set_to_none=True)
    losses = chunk(toks, torch.arange(toks.shape[1])[None].expand_as(toks), None, labels=toks.roll(-1, dims=1))
    loss = losses.float().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in chunk.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bias", [True, False])
def test_megatron_swiglu_and_bias_dropout_add_fusions_compute_the_same(build, bias, one_thread):
    """megatron compiles these with torch.compile (Triton on CUDA); here they run eagerly, the same
    Python functions: equal loss and gradients to the unfused model from the same weights."""
    cfg = make_cfg(activation="swiglu", bias=bias)
    toks = tokens(cfg)
    fused = Fusions(bias_swiglu=True, bias_dropout_add=True)
    with torch.compiler.set_stance("force_eager"):
        lf, gf = _loss_and_grads(build(cfg, fused), toks)
    lu, gu = _loss_and_grads(build(cfg, OFF), toks)
    assert lf == lu
    assert gf.keys() == gu.keys()
    for name in gf:
        torch.testing.assert_close(gf[name], gu[name], rtol=1e-5, atol=1e-7, msg=name)


def test_megatrons_fused_bias_gelu_is_another_function():
    from megatron.core.fusions.fused_bias_gelu import bias_gelu_impl

    x, bias = torch.linspace(-4, 4, 101), torch.zeros(101)
    with torch.compiler.set_stance("force_eager"):
        fused = bias_gelu_impl(x, bias)
    assert (fused - F.gelu(x)).abs().max() > 1e-4  # the tanh approximation, not the model's exact GELU


def test_fused_adamw_as_the_deepspeed_engine_builds_it_computes_the_same(one_thread):
    """``client_adamw(fused=True)`` with the engine's explicit state (step 0, then a carried step)
    against torch's default AdamW: the same parameters after three updates."""
    torch.manual_seed(0)
    start = [torch.randn(7, 5), torch.randn(5)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    train = TrainConfig(lr=1e-2, weight_decay=0.1)
    out = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = client_adamw([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], train, fused=fused)
        init_torch_adam_state(opt)
        set_torch_adam_step(opt, 4)  # a carried Adam step (grown or resumed)
        assert all(s["step"].dtype == torch.float32 and s["step"].device == p.device for p, s in opt.state.items())
        for g in grads:
            for p, gp in zip(params, g):
                p.grad = gp.clone()
            opt.step()
        assert opt.param_groups[0]["fused"] is (True if fused else None)
        out[fused] = [p.detach() for p in params]
        assert all(float(s["step"]) == 7.0 for s in opt.state.values())
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
