"""Configuration of FLM-shaped models exported by flm-grow (``model_type: flm``).

Written by the flm-grow project (``training/hf/remote``) and copied unchanged into each export;
loaded by ``AutoConfig.from_pretrained(DIR, trust_remote_code=True)``. Fields mirror the
project's ``model:`` section: the block variant (``normalization``, ``activation``,
``position_embedding``, ``bias``), the shapes, and the muP multipliers, which the model applies
itself (they are not folded into the weights).
"""

try:  # transformers >= 5 renamed the base class (the old name is kept as an alias)
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig


class FLMConfig(_BaseConfig):
    """Shape and block variant of an FLM decoder (see the module docstring).

    ``xpos_offset``: xPos scales queries by ``zeta ** ((p - xpos_offset) / xpos_scale_base)`` and keys
    by its inverse at position ``p``; attention scores depend only on position differences, so the
    offset cancels exactly; the project's training uses ``seq_length // 2`` (the sequence's middle),
    which keeps the factors in range for every position up to ``max_position_embeddings``.
    """

    model_type = "flm"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 16
    max_position_embeddings: int = 64
    normalization: str = "LayerNorm"
    activation: str = "gelu"
    position_embedding: str = "rope"
    rope_theta: float = 10000.0
    xpos_scale_base: float = 512.0
    xpos_offset: int = 32
    bias: bool = True
    norm_eps: float = 1e-5
    input_multiplier: float = 1.0
    output_multiplier: float = 1.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
