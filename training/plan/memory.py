"""Bytes per GPU of a stage under its layout: model states by ZeRO stage, and activations.

Model states (mixed precision as the trainer runs it, ``training/engine/optim.py`` and
``training/engine/trainer.py``): bf16 weights (2 B/param), fp32 gradient buffers (4 B/param, megatron's
``grad_reduce_in_fp32``), fp32 master weights + Adam m + v (12 B/param); in fp32 training 4, 4 and
8 B. ZeRO stage 1 (= megatron's distributed optimizer) shards the optimizer states over DP,
stage 2 also the gradients, stage 3 also the weights (DeepSpeed's meaning of the stages).

Activations (bytes kept for the backward pass) follow Korthikanti et al. 2022, "Reducing
Activation Recomputation in Large Transformer Models", Sec. 4: per layer and micro-batch of
``b`` sequences of ``s`` tokens, with 16-bit activations, ``t``-way TP and sequence parallelism,
``s·b·h·(34/t + 5·a·s/(h·t))`` bytes; ``s·b·h·34/t`` with selective recomputation (the attention
core is recomputed); ``2·s·b·h/t`` with full recomputation (only each layer's input is kept).
The paper's constants assume an FFN of 4h, one K/V head per query head, GELU and dropout after
attention, on the attention probabilities and after the MLP. ``layer_activation_bytes`` keeps the
paper's term-by-term accounting and generalises exactly these four points (FFN width, query
groups, SwiGLU, dropout off), so it reduces to the paper's formula in the paper's setting
(tested). Terms:

- kept by every TP rank, sharded by sequence parallelism (the paper's ``10·sbh``): inputs of the
  two norms (2+2), of the QKV matmul (2) and of FC1 (2), and the two hidden-dropout masks (1+1);
- sharded by TP (the paper's ``24·sbh``): Q (2·sb·a·d), K and V (2·sb·g·d each), the input of the
  attention projection (2·sb·a·d), and the MLP: GELU input and FC2 input (2·sbf each); SwiGLU
  keeps FC1's output (4·sbf), the SiLU output (2·sbf) and FC2's input (2·sbf);
- the attention core (the paper's ``5·as²b``): softmax output (2·as²b), attention-dropout mask
  (as²b) and dropout output (2·as²b); without attention dropout the softmax output is what the
  value matmul keeps, so 2·as²b.

Pipeline schedules decide how many micro-batches a rank holds: with 1F1B, rank ``r`` of ``p``
holds ``min(p - r, m)`` micro-batches of its layers (``m`` micro-batches per DP rank); with the
interleaved schedule, ``(p - r - 1)·2 + (v - 1)·p + 1`` chunk activations (megatron's warm-up
count plus the one in flight, at most ``m·v``). On top: the last rank's final norm and output layer
inputs (2·sbh/t each) and the fp32 softmax of the cross entropy (4·s·b·V/t), the first rank's
embedding-dropout mask (s·b·h/t, with hidden dropout); full recomputation additionally needs one
layer's full activations while that layer is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from training.config import ModelConfig, ParallelConfig
from training.plan.params import RankParams

Recompute = Literal["none", "selective", "full"]
RECOMPUTE_MODES: tuple[Recompute, ...] = ("none", "selective", "full")


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter of each model state, before ZeRO sharding."""

    weights: int
    grads: int
    optimizer: int


def state_bytes(precision: Literal["bf16", "fp32"]) -> StateBytes:
    return StateBytes(2, 4, 12) if precision == "bf16" else StateBytes(4, 4, 8)


def layer_activation_bytes(
    model: ModelConfig, parallel: ParallelConfig, micro_batch: int, recompute: Recompute
) -> float:
    """Activation bytes one transformer layer keeps per micro-batch on one GPU (see module doc)."""
    s, b, h, f = model.seq_length, micro_batch, model.hidden_size, model.ffn_hidden_size
    a, g, d = model.num_attention_heads, model.query_groups, model.head_dim
    t = parallel.tp
    sp = parallel.sequence_parallel
    hidden_drop = model.hidden_dropout > 0
    attn_drop = model.attention_dropout > 0
    if recompute == "full":
        return 2 * s * b * h / (t if sp else 1)
    shared = s * b * h * (2 + 2 + 2 + 2 + (2 if hidden_drop else 0))
    mlp = s * b * f * (8 if model.activation == "swiglu" else 4)
    split = 2 * s * b * a * d + 2 * 2 * s * b * g * d + 2 * s * b * a * d + mlp
    core = a * s * s * b * (5 if attn_drop else 2)
    total = shared / (t if sp else 1) + split / t
    if recompute == "none":
        total += core / t
    return total


def in_flight(parallel: ParallelConfig, pp_rank: int, micro_batches: int) -> int:
    """Chunk activations (micro-batch x model chunk) rank ``pp_rank`` holds at its peak."""
    p = parallel.pp
    if not parallel.virtual_pp:
        return min(p - pp_rank, micro_batches)
    v = parallel.virtual_pp
    warmup = (p - pp_rank - 1) * 2 + (v - 1) * p
    return min(warmup + 1, micro_batches * v)


@dataclass(frozen=True)
class RankMemory:
    """Bytes on one GPU at pipeline rank ``pp_rank``."""

    pp_rank: int
    params: int
    weights: float
    grads: float
    optimizer: float
    activations: dict[str, float] = field(default_factory=dict)

    @property
    def states(self) -> float:
        return self.weights + self.grads + self.optimizer

    def total(self, recompute: Recompute) -> float:
        return self.states + self.activations[recompute]


def rank_memory(
    model: ModelConfig,
    parallel: ParallelConfig,
    ranks: list[RankParams],
    *,
    dp: int,
    micro_batch: int,
    micro_batches: int,
    zero: int,
    precision: Literal["bf16", "fp32"],
) -> list[RankMemory]:
    """Memory of every pipeline rank (any TP/DP rank of it) for each recomputation mode."""
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {zero}")
    sb = state_bytes(precision)
    s, b, h, t = model.seq_length, micro_batch, model.hidden_size, parallel.tp
    p = parallel.pp
    out = []
    for rank in ranks:
        n = rank.total
        weights = n * sb.weights / (dp if zero >= 3 else 1)
        grads = n * sb.grads / (dp if zero >= 2 else 1)
        optimizer = n * sb.optimizer / (dp if zero >= 1 else 1)
        chunk_layers = rank.chunks[0].layers
        held = in_flight(parallel, rank.pp_rank, micro_batches)
        acts = {}
        for mode in ("none", "selective", "full"):
            per_layer = layer_activation_bytes(model, parallel, micro_batch, mode)
            total = held * chunk_layers * per_layer
            if mode == "full":
                total += layer_activation_bytes(model, parallel, micro_batch, "none")
            if rank.pp_rank == 0 and model.hidden_dropout > 0:
                total += held * s * b * h / (t if parallel.sequence_parallel else 1)
            if rank.pp_rank == p - 1:
                seq_shard = t if parallel.sequence_parallel else 1
                total += 2 * 2 * s * b * h / seq_shard + 4 * s * b * model.padded_vocab_size(t) / t
            acts[mode] = total
        out.append(
            RankMemory(
                pp_rank=rank.pp_rank, params=n, weights=weights, grads=grads, optimizer=optimizer, activations=acts
            )
        )
    return out


def worst_rank(memory: list[RankMemory], recompute: Recompute) -> RankMemory:
    return max(memory, key=lambda m: m.total(recompute))


def first_fitting(memory: list[RankMemory], capacity: float) -> Optional[Recompute]:
    """The least recomputation under which every rank fits in ``capacity`` bytes, or None."""
    for mode in RECOMPUTE_MODES:
        if worst_rank(memory, mode).total(mode) <= capacity:
            return mode
    return None
