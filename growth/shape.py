"""``ModelShape``: the sizes that growth changes, and the logical tensor shapes they imply.

A shape is pure data (a config section: loadable with ``training.config_base.from_dict``). ``vocab``
is the *padded* number of embedding rows (the tensors' first dimension), not the tokenizer's
vocabulary; the tokenizer's ``vocab_size`` never changes under growth.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.config import ModelConfig
from training.config_base import ConfigError, join_key


@dataclass
class ModelShape:
    """Sizes of a decoder LM. Every field is required (0 means 'not given' and fails validation)."""

    layers: int = 0
    hidden: int = 0
    ffn: int = 0
    heads: int = 0
    query_groups: int = 0
    head_dim: int = 0
    #: padded embedding rows (``ModelConfig.padded_vocab_size(tp)``)
    vocab: int = 0

    def validate(self, path: str) -> None:
        """``ConfigError`` naming the key under ``path`` unless every size is positive, the heads
        divide into the query groups and the head dim is even."""
        for name in ("layers", "hidden", "ffn", "heads", "query_groups", "head_dim", "vocab"):
            if getattr(self, name) <= 0:
                raise ConfigError(join_key(path, name), "required; must be a positive integer")
        if self.heads % self.query_groups:
            raise ConfigError(
                join_key(path, "query_groups"),
                f"{self.heads} heads are not divisible into {self.query_groups} query groups",
            )
        if self.head_dim % 2:
            raise ConfigError(join_key(path, "head_dim"), f"{self.head_dim} must be even for rotary embeddings")

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, tp: int = 1) -> ModelShape:
        """Shape of ``cfg`` (a ``training.config.ModelConfig``) with the vocabulary padded for ``tp``."""
        return cls(
            layers=cfg.num_layers,
            hidden=cfg.hidden_size,
            ffn=cfg.ffn_hidden_size,
            heads=cfg.num_attention_heads,
            query_groups=cfg.query_groups,
            head_dim=cfg.head_dim,
            vocab=cfg.padded_vocab_size(tp),
        )

    @property
    def heads_per_group(self) -> int:
        """Query heads that share one key/value head (``heads / query_groups``; exact after ``validate``)."""
        return self.heads // self.query_groups

    @property
    def qkv_rows(self) -> int:
        """Rows of the fused QKV weight: per group, its query heads then one key and one value head."""
        return (self.heads + 2 * self.query_groups) * self.head_dim
