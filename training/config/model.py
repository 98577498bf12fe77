"""The model section: shape, block variant, μP (``ModelConfig``), and which fields define the function."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

from training.config_base import ConfigError, join_key

#: ``ModelConfig`` fields that do not change the function a checkpoint's weights compute: how
#: long the training sequences are (positions enter only through differences), how fresh weights
#: are drawn, dropout. Every other field defines the function (``function_fields``).
NON_FUNCTION_FIELDS = ("seq_length", "init_std", "hidden_dropout", "attention_dropout")


@dataclass
class MuPConfig:
    """μP, the maximal-update parametrisation (Yang et al. 2022) as μScaling and FLM-101B apply it
    to a pre-LN decoder: hyperparameters tuned at ``base_width`` transfer to any ``hidden_size``.

    With the width multiplier ``m = hidden_size / base_width``: hidden matrices (QKV, attention
    output, FC1, FC2) are drawn with std ``init_std / sqrt(m)`` (megatron's extra ``1 / sqrt(2 *
    num_layers)`` on the attention output and FC2 kept) and trained with Adam learning rate
    ``lr / m`` and weight decay ``weight_decay * m`` (so the decay per step, ``lr * weight_decay``,
    does not depend on the width); attention logits are ``attention_multiplier * q.k / d_head``
    (not ``/ sqrt(d_head)``); the logits are multiplied by ``output_multiplier / m``. Embeddings,
    the readout (the untied output layer, drawn with ``init_std`` like the embedding), norms and
    biases keep ``init_std``, ``lr`` and ``weight_decay``. See docs/mup.md. A model without this
    section uses the standard parametrisation.
    """

    base_width: int = 256
    attention_multiplier: float = 1.0

    def validate(self, path: str) -> None:
        if self.base_width <= 0:
            raise ConfigError(join_key(path, "base_width"), "must be a positive integer (the proxy's hidden_size)")
        if self.attention_multiplier <= 0:
            raise ConfigError(join_key(path, "attention_multiplier"), "must be > 0")


@dataclass
class ModelConfig:
    """Shape and block variant of the decoder LM."""

    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 256
    num_attention_heads: int = 4
    #: number of key/value heads (GQA); null means one per attention head (MHA)
    num_query_groups: Optional[int] = None
    #: head dimension; null means hidden_size / num_attention_heads
    kv_channels: Optional[int] = None
    #: size of the tokenizer's vocabulary (the embedding is padded, see padded_vocab_size)
    vocab_size: int = 512
    #: embedding rows are padded to a multiple of this times the TP size
    make_vocab_size_divisible_by: int = 64
    seq_length: int = 64
    normalization: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    activation: Literal["gelu", "swiglu"] = "gelu"
    position_embedding: Literal["rope", "xpos"] = "rope"
    rotary_base: int = 10000
    xpos_scale_base: float = 512.0
    tie_embeddings: bool = True
    #: biases in the linear layers (GPT-3/FLM style); Llama style has none
    bias: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02
    #: muP-style multipliers: embedding output x input_multiplier, logits x output_multiplier
    input_multiplier: float = 1.0
    output_multiplier: float = 1.0
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    #: μP settings (``MuPConfig``); null means the standard parametrisation
    mup: Optional[MuPConfig] = None

    @classmethod
    def function_fields(cls) -> tuple[str, ...]:
        """The fields that define the function of the weights (all but ``NON_FUNCTION_FIELDS``):
        a checkpoint loads only into a config that agrees with it on every one of them."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in NON_FUNCTION_FIELDS)

    def function_values(self) -> dict[str, Any]:
        """``function_fields`` -> value, with the two fields that have a null shorthand resolved
        (``num_query_groups`` null = heads, ``kv_channels`` null = hidden / heads), so equal models
        compare equal however they were written."""
        values = {name: getattr(self, name) for name in self.function_fields()}
        values.update(num_query_groups=self.query_groups, kv_channels=self.head_dim)
        return values

    @property
    def width_multiplier(self) -> float:
        """μP's ``m = hidden_size / mup.base_width``; 1 under the standard parametrisation."""
        return 1.0 if self.mup is None else self.hidden_size / self.mup.base_width

    @property
    def readout_multiplier(self) -> float:
        """What the logits are multiplied by: ``output_multiplier``, divided by ``m`` under μP."""
        return self.output_multiplier if self.mup is None else self.output_multiplier / self.width_multiplier

    @property
    def attention_scale(self) -> float:
        """What ``q.k`` is multiplied by: ``1 / sqrt(head_dim)``, or ``attention_multiplier / head_dim``
        under μP."""
        if self.mup is None:
            return 1.0 / math.sqrt(self.head_dim)
        return self.mup.attention_multiplier / self.head_dim

    @property
    def hidden_init_std(self) -> float:
        """The std hidden matrices are drawn with: ``init_std``, divided by ``sqrt(m)`` under μP."""
        return self.init_std / math.sqrt(self.width_multiplier)

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tp: int) -> int:
        multiple = self.make_vocab_size_divisible_by * tp
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def validate(self, path: str) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "vocab_size",
            "seq_length",
            "make_vocab_size_divisible_by",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(join_key(path, name), "must be a positive integer")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                join_key(path, "num_attention_heads"),
                f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads; "
                "choose a divisor of hidden_size or set kv_channels",
            )
        if self.num_attention_heads % self.query_groups:
            raise ConfigError(
                join_key(path, "num_query_groups"),
                f"{self.num_attention_heads} heads are not divisible into {self.query_groups} groups",
            )
        if self.head_dim % 2:
            raise ConfigError(
                join_key(path, "kv_channels"), f"head dim {self.head_dim} must be even for rotary embeddings"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(join_key(path, name), "must be in [0, 1)")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise ConfigError(join_key(path, "norm_eps" if self.norm_eps <= 0 else "init_std"), "must be > 0")
