"""Model size and training FLOPs as functions of a ``ModelConfig`` alone (no torch): what the
metrics, the planner and the run-level LR schedules (equal-FLOPs entry of a grown stage) count."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: training.config uses these functions (equal-FLOPs schedule entry)
    from training.config import ModelConfig


def matmul_params(model: ModelConfig) -> int:
    """Weights that take part in matmuls per token: all linear layers plus the output projection.

    (The embedding lookup is not a matmul; with tied embeddings the output projection still is.)
    """
    h, f, d = model.hidden_size, model.ffn_hidden_size, model.head_dim
    qkv = h * (model.num_attention_heads + 2 * model.query_groups) * d
    proj = model.num_attention_heads * d * h
    fc1 = h * f * (2 if model.activation == "swiglu" else 1)
    fc2 = f * h
    return model.num_layers * (qkv + proj + fc1 + fc2) + model.vocab_size * h


def non_embedding_params(model: ModelConfig) -> int:
    """The matmul weights of the transformer blocks (Kaplan et al. 2020's N): ``matmul_params``
    without the output projection."""
    return matmul_params(model) - model.vocab_size * model.hidden_size


def total_params(model: ModelConfig, tp: int = 1) -> int:
    """All parameters (padded embedding, untied output layer, norms, biases)."""
    h, f, d, L = model.hidden_size, model.ffn_hidden_size, model.head_dim, model.num_layers
    nq, ng = model.num_attention_heads, model.query_groups
    v = model.padded_vocab_size(tp)
    norm = h * (2 if model.normalization == "LayerNorm" else 1)
    fc1_rows = f * (2 if model.activation == "swiglu" else 1)
    layer = h * (nq + 2 * ng) * d + nq * d * h + h * fc1_rows + f * h + 2 * norm
    if model.bias:
        layer += (nq + 2 * ng) * d + h + fc1_rows + h
    out = 0 if model.tie_embeddings else v * h
    return L * layer + v * h + out + norm


def flops_per_token(model: ModelConfig) -> float:
    """Training FLOPs per token: 6 x matmul params + attention scores/values (12 x L x s x d x nq),
    i.e. forward + backward, without activation recomputation (Megatron's formula without the
    recompute term; causal masking is not discounted)."""
    attn = 12 * model.num_layers * model.seq_length * model.head_dim * model.num_attention_heads
    return 6.0 * matmul_params(model) + attn
