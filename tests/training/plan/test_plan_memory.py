"""Memory model: the activation terms reduce to Korthikanti et al. 2022's closed forms in the
paper's setting; model states shard by ZeRO stage; pipeline ranks hold the right micro-batches;
the analytic per-rank parameter counts add up to the model."""

from __future__ import annotations

import dataclasses

import pytest

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from training.config import ModelConfig, ParallelConfig
from training.model_size import total_params
from training.plan.memory import Recompute, in_flight, layer_activation_bytes, rank_memory
from training.plan.params import rank_params

# the paper's setting: FFN 4h, MHA, GELU, dropout everywhere (GPT-3 175B-like shape)
PAPER = ModelConfig(
    num_layers=96,
    hidden_size=12288,
    ffn_hidden_size=4 * 12288,
    num_attention_heads=96,
    vocab_size=51200,
    seq_length=2048,
    hidden_dropout=0.1,
    attention_dropout=0.1,
)


def korthikanti_layer_bytes(
    s: int, b: int, h: int, a: int, t: int, *, sequence_parallel: bool, recompute: Recompute
) -> float:
    """The oracle: Korthikanti et al. 2022's closed forms (its Table 2), bytes of one layer's activations."""
    if recompute == "full":
        return 2 * s * b * h / (t if sequence_parallel else 1)
    if sequence_parallel:
        base = 34 / t
    else:
        base = 10 + 24 / t
    if recompute == "none":
        base += 5 * a * s / (h * t)
    return s * b * h * base


@pytest.mark.parametrize("tp,sp", [(1, False), (2, False), (8, False), (2, True), (8, True)])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_layer_activations_equal_the_papers_formula(tp, sp, recompute):
    par = ParallelConfig(tp=tp, sequence_parallel=sp)
    got = layer_activation_bytes(PAPER, par, 1, recompute)
    want = korthikanti_layer_bytes(2048, 1, 12288, 96, tp, sequence_parallel=sp, recompute=recompute)
    assert got == pytest.approx(want, rel=1e-12)


def test_papers_numbers():
    """Korthikanti's 34 + 5as/h per sbh: for this shape (a s / h = 16) 114 sbh per layer without TP."""
    sbh = 2048 * 1 * 12288
    assert layer_activation_bytes(PAPER, ParallelConfig(), 1, "none") == pytest.approx(
        sbh * (34 + 5 * 96 * 2048 / 12288)
    )
    assert layer_activation_bytes(PAPER, ParallelConfig(), 1, "selective") == pytest.approx(34 * sbh)


def test_generalisations_drop_exactly_their_terms():
    s, h, a = 2048, 12288, 96
    sbh = s * h
    no_drop = dataclasses.replace(PAPER, hidden_dropout=0.0, attention_dropout=0.0)
    base = layer_activation_bytes(PAPER, ParallelConfig(), 1, "none")
    # two sbh hidden-dropout masks and the attention dropout's mask (as^2) and output (2as^2)
    assert base - layer_activation_bytes(no_drop, ParallelConfig(), 1, "none") == pytest.approx(2 * sbh + 3 * a * s * s)
    # SwiGLU keeps fc1's 2f output (4sbf), SiLU out (2sbf), fc2 input (2sbf) instead of 2 x 2sbf
    swiglu = dataclasses.replace(PAPER, activation="swiglu")
    f = PAPER.ffn_hidden_size
    assert layer_activation_bytes(swiglu, ParallelConfig(), 1, "selective") - layer_activation_bytes(
        PAPER, ParallelConfig(), 1, "selective"
    ) == pytest.approx(4 * s * f)
    # 8 query groups instead of 96: K and V shrink from 2sbh each to 2 s b g d each
    gqa = dataclasses.replace(PAPER, num_query_groups=8)
    d = PAPER.head_dim
    assert layer_activation_bytes(PAPER, ParallelConfig(), 1, "selective") - layer_activation_bytes(
        gqa, ParallelConfig(), 1, "selective"
    ) == pytest.approx(2 * 2 * s * (a - 8) * d)


def test_micro_batches_in_flight():
    par = ParallelConfig(pp=4)
    assert [in_flight(par, r, 88) for r in range(4)] == [4, 3, 2, 1]
    assert [in_flight(par, r, 2) for r in range(4)] == [2, 2, 2, 1]
    inter = ParallelConfig(pp=4, virtual_pp=2)
    # megatron's interleaved warm-up (p - r - 1) * 2 + (v - 1) * p, plus the one in flight
    assert [in_flight(inter, r, 88) for r in range(4)] == [11, 9, 7, 5]


def test_states_shard_by_zero_stage():
    model = ModelConfig(num_layers=4, hidden_size=256, ffn_hidden_size=1024, num_attention_heads=4)
    par = ParallelConfig(tp=2)
    ranks = rank_params(model, par)
    n = ranks[0].total
    mem = {
        z: rank_memory(model, par, ranks, dp=8, micro_batch=1, micro_batches=8, zero=z, precision="bf16")[0]
        for z in range(4)
    }
    assert (mem[0].weights, mem[0].grads, mem[0].optimizer) == (2 * n, 4 * n, 12 * n)
    assert (mem[1].weights, mem[1].grads, mem[1].optimizer) == (2 * n, 4 * n, 12 * n / 8)
    assert (mem[2].weights, mem[2].grads, mem[2].optimizer) == (2 * n, 4 * n / 8, 12 * n / 8)
    assert (mem[3].weights, mem[3].grads, mem[3].optimizer) == (2 * n / 8, 4 * n / 8, 12 * n / 8)
    fp32 = rank_memory(model, par, ranks, dp=8, micro_batch=1, micro_batches=8, zero=0, precision="fp32")[0]
    assert (fp32.weights, fp32.grads, fp32.optimizer) == (4 * n, 4 * n, 8 * n)


def test_first_pipeline_rank_holds_most_activations_last_holds_the_logits():
    model = ModelConfig(
        num_layers=8, hidden_size=512, ffn_hidden_size=2048, num_attention_heads=8, vocab_size=32000, seq_length=1024
    )
    par = ParallelConfig(tp=2, pp=4, sequence_parallel=True)
    mem = rank_memory(
        model, par, rank_params(model, par), dp=1, micro_batch=1, micro_batches=16, zero=0, precision="bf16"
    )
    per_layer = layer_activation_bytes(model, par, 1, "none")
    assert mem[0].activations["none"] == pytest.approx(4 * 2 * per_layer)
    logits = 4 * 1024 * 32000 / 2 + 2 * 2 * 1024 * 512 / 2
    assert mem[3].activations["none"] == pytest.approx(1 * 2 * per_layer + logits)
    full = layer_activation_bytes(model, par, 1, "full")
    assert mem[0].activations["full"] == pytest.approx(4 * 2 * full + per_layer)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tie_embeddings": False},
        {"activation": "swiglu", "normalization": "RMSNorm", "bias": False},
        {"num_query_groups": 2, "vocab_size": 1000},
    ],
)
@pytest.mark.parametrize("tp,pp,vpp", [(1, 1, None), (2, 1, None), (1, 2, None), (2, 2, 2), (4, 4, None)])
def test_rank_counts_add_up_to_the_model(overrides, tp, pp, vpp):
    model = dataclasses.replace(
        ModelConfig(num_layers=16, hidden_size=128, ffn_hidden_size=512, num_attention_heads=8), **overrides
    )
    par = ParallelConfig(tp=tp, pp=pp, virtual_pp=vpp)
    ranks = rank_params(model, par)
    assert sum(r.layers for r in ranks) == model.num_layers
    per_tp = sum(r.total for r in ranks)
    h = model.hidden_size
    norm = h * (2 if model.normalization == "LayerNorm" else 1)
    # replicated over TP: 2 norms per layer + final norm, and the row-parallel biases (proj, fc2)
    replicated = model.num_layers * 2 * norm + norm + (model.num_layers * 2 * h if model.bias else 0)
    tied_copy = model.padded_vocab_size(tp) * h if (model.tie_embeddings and pp > 1) else 0
    assert per_tp * tp - (tp - 1) * replicated - tied_copy == total_params(model, tp)
