"""Exact parameter counts per GPU of a TP/PP(/virtual PP) layout, without building the model.

The counts follow how megatron-core with the project's layer spec (``training/engine/model/spec.py``)
places and shards parameters:

- column-parallel weights and biases (QKV, FC1, the embedding and output layer) are split over
  TP; row-parallel weights (attention projection, FC2) too, but their biases are replicated;
  norm weights/biases are replicated on every TP rank;
- layers are split evenly over ``pp x virtual_pp`` chunks; the embedding lives on the first
  chunk of pipeline rank 0, the final norm and the output layer on the last chunk of the last
  pipeline rank; with tied embeddings and ``pp > 1`` the last rank holds a copy of the embedding
  as its output weight (megatron keeps the two in sync through the embedding group), which has
  gradients and optimizer state like any other parameter.

Every TP rank of a pipeline rank holds the same number of parameters (the vocabulary is padded
to a multiple of TP). ``training.plan.materialize`` cross-checks these counts against meta-device
builds of the real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from training.config import ModelConfig, ParallelConfig
from training.model_size import total_params


@dataclass(frozen=True)
class ChunkParams:
    """Parameters of one model chunk (one virtual pipeline stage) on one TP rank."""

    pp_rank: int
    vp_stage: Optional[int]
    layers: int
    layer_params: int
    embedding: int
    final_norm: int
    output_layer: int

    @property
    def total(self) -> int:
        return self.layers * self.layer_params + self.embedding + self.final_norm + self.output_layer


@dataclass(frozen=True)
class RankParams:
    """All parameters one GPU at pipeline rank ``pp_rank`` holds (any TP rank)."""

    pp_rank: int
    chunks: tuple[ChunkParams, ...]

    @property
    def total(self) -> int:
        return sum(c.total for c in self.chunks)

    @property
    def layers(self) -> int:
        return sum(c.layers for c in self.chunks)

    @property
    def embedding(self) -> int:
        return sum(c.embedding for c in self.chunks)

    @property
    def output_layer(self) -> int:
        return sum(c.output_layer for c in self.chunks)


def norm_params(model: ModelConfig) -> int:
    return model.hidden_size * (2 if model.normalization == "LayerNorm" else 1)


def layer_params_per_tp_rank(model: ModelConfig, tp: int) -> int:
    """Parameters of one transformer layer on one TP rank."""
    h, f, d = model.hidden_size, model.ffn_hidden_size, model.head_dim
    nq, ng = model.num_attention_heads, model.query_groups
    qkv_rows = (nq + 2 * ng) * d // tp
    fc1_rows = f * (2 if model.activation == "swiglu" else 1) // tp
    weights = qkv_rows * h + h * (nq * d // tp) + fc1_rows * h + h * (f // tp)
    biases = (qkv_rows + h + fc1_rows + h) if model.bias else 0
    return weights + biases + 2 * norm_params(model)


def rank_params(model: ModelConfig, parallel: ParallelConfig) -> list[RankParams]:
    """Per pipeline rank, the parameters held by each of its GPUs (identical over TP ranks)."""
    tp, pp = parallel.tp, parallel.pp
    vpp = parallel.virtual_pp or 1
    chunks_total = pp * vpp
    if model.num_layers % chunks_total:
        raise ValueError(f"{model.num_layers} layers do not split evenly over pp x virtual_pp = {chunks_total}")
    per_chunk = model.num_layers // chunks_total
    vocab_shard = model.padded_vocab_size(tp) // tp * model.hidden_size
    per_layer = layer_params_per_tp_rank(model, tp)
    ranks = []
    for r in range(pp):
        chunks = []
        for v in range(vpp):
            first = r == 0 and v == 0
            last = r == pp - 1 and v == vpp - 1
            if last:
                output = 0 if (model.tie_embeddings and first) else vocab_shard
            else:
                output = 0
            chunks.append(
                ChunkParams(
                    pp_rank=r,
                    vp_stage=v if parallel.virtual_pp else None,
                    layers=per_chunk,
                    layer_params=per_layer,
                    embedding=vocab_shard if first else 0,
                    final_norm=norm_params(model) if last else 0,
                    output_layer=output,
                )
            )
        ranks.append(RankParams(pp_rank=r, chunks=tuple(chunks)))
    return ranks


def unique_params(model: ModelConfig, parallel: ParallelConfig) -> int:
    """Distinct parameters of the whole model under this layout's vocabulary padding (a tied
    output weight counted once), i.e. ``training.model_size.total_params(model, tp)``."""
    return total_params(model, parallel.tp)
