"""FLM-shaped causal LM for transformers (``trust_remote_code``), written by the flm-grow project.

Copied unchanged into exports of ``flm export-hf``; it computes what the project's model computes
(``growth/reference.py`` is the plain-torch reference it is tested against) for every block
variant the project trains:

* pre-norm decoder blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, a final norm;
* norms: ``LayerNorm`` (gain and bias) or ``RMSNorm`` (gain), ``eps = norm_eps``;
* attention: fused QKV rows per query group ``[q heads of the group, k, v]`` (GQA), optional
  biases, RoPE with the rotate-half convention (dims ``j`` and ``j + d/2`` pair; angles in float64),
  optionally xPos on top (queries times ``zeta ** ((p - xpos_offset) / xpos_scale_base)``, keys
  divided by it, ``zeta_i = (2i/d + 0.4) / 1.4``), scores scaled by ``1/sqrt(head_dim)``;
* MLP: ``fc1`` then exact-erf GELU, or SwiGLU with ``fc1 = [gate; up]`` (``silu(gate) * up``), ``fc2``;
* muP multipliers: embeddings times ``input_multiplier``, logits times ``output_multiplier``;
  tied or untied output matrix.

Generation uses a KV cache (transformers' ``DynamicCache``): keys are cached after RoPE/xPos,
which depend on absolute positions only, so cached and uncached forwards agree.

This file must not import the flm-grow package: it is loaded from the export directory. Why
norms, RoPE/xPos and attention are written here instead of reusing transformers' Llama/GPT-NeoX
modules or its attention interface: those are internals that change between releases (an export
must keep loading), none of them computes xPos, and writing the same formulas as the reference
(float64 angles, explicit softmax) is what keeps the logits equal to the project's.
"""

from __future__ import annotations

import math
from dataclasses import fields as _fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_flm import FLMConfig

#: transformers 5 calls the cache ``cache`` (4.x: ``past_key_values``), in inputs and outputs
_CACHE_FIELD = "cache" if "cache" in {f.name for f in _fields(CausalLMOutputWithPast)} else "past_key_values"
_TIED_V5 = _CACHE_FIELD == "cache"


class FLMNorm(nn.Module):
    def __init__(self, size: int, eps: float, rms: bool):
        super().__init__()
        self.eps, self.rms = eps, rms
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = None if rms else nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.weight
        xc = x - x.mean(-1, keepdim=True)
        return xc * torch.rsqrt((xc * xc).mean(-1, keepdim=True) + self.eps) * self.weight + self.bias


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    t1, t2 = t.chunk(2, dim=-1)
    return torch.cat([-t2, t1], dim=-1)


class FLMPositions:
    """RoPE cos/sin and xPos factors ``[b, s, 1, d]`` for ``position_ids [b, s]`` (float64, then cast).

    Built once per forward; the tables are computed on the device of the queries that use them, once
    per device (memoized), so a model whose blocks accelerate's ``device_map`` spreads over several
    devices gets each block's tables on that block's device: the dispatch hooks move the tensors and
    modules of a call, not this object. Not module buffers: ``from_pretrained`` (transformers 5)
    materializes non-persistent buffers uninitialized, and ``model.to(dtype)`` would cast float64
    angles to bfloat16.
    """

    def __init__(self, config: FLMConfig, position_ids: torch.Tensor, dtype: torch.dtype):
        self.config, self.position_ids, self.dtype = config, position_ids, dtype
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = {}

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """``(cos, sin, xpos or None)`` on ``device``."""
        if device not in self._tables:
            self._tables[device] = self._compute(device)
        return self._tables[device]

    def _compute(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        config, d = self.config, self.config.head_dim
        pos = self.position_ids.to(device=device, dtype=torch.float64)[..., None]
        inv_freq = float(config.rope_theta) ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        angle = pos * inv_freq
        angle = torch.cat([angle, angle], dim=-1)[:, :, None, :]
        cos, sin = angle.cos().to(self.dtype), angle.sin().to(self.dtype)
        xpos = None
        if config.position_embedding == "xpos":
            zeta = (2 * torch.arange(d // 2, dtype=torch.float64, device=device) / d + 0.4) / 1.4
            scale = zeta ** ((pos - config.xpos_offset) / config.xpos_scale_base)
            xpos = torch.cat([scale, scale], dim=-1)[:, :, None, :].to(self.dtype)
        return cos, sin, xpos

    def apply(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin, xpos = self.tables(q.device)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if xpos is not None:
            q, k = q * xpos, k / xpos
        return q, k


class FLMAttention(nn.Module):
    def __init__(self, config: FLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.groups, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        per_group = self.heads // self.groups
        self.qkv = nn.Linear(config.hidden_size, self.groups * (per_group + 2) * self.head_dim, bias=config.bias)
        self.proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor, positions: FLMPositions, allowed: torch.Tensor, cache) -> torch.Tensor:
        b, s, _ = x.shape
        r, d = self.heads // self.groups, self.head_dim
        qkv = self.qkv(x).view(b, s, self.groups, r + 2, d)
        q = qkv[:, :, :, :r].reshape(b, s, self.heads, d)
        k, v = qkv[:, :, :, r], qkv[:, :, :, r + 1]
        q, k = positions.apply(q, k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, heads, s, d]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        group_of_head = torch.arange(self.heads, device=x.device) // r
        k, v = k[:, group_of_head], v[:, group_of_head]
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        probs = torch.nan_to_num(probs, nan=0.0)  # rows of padding queries see no key at all
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, self.heads * d)
        return self.proj(ctx)


class FLMMLP(nn.Module):
    def __init__(self, config: FLMConfig):
        super().__init__()
        self.swiglu = config.activation == "swiglu"
        width = config.intermediate_size * (2 if self.swiglu else 1)
        self.fc1 = nn.Linear(config.hidden_size, width, bias=config.bias)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc1(x)
        if self.swiglu:
            gate, up = z.chunk(2, dim=-1)
            return self.fc2(F.silu(gate) * up)
        return self.fc2(F.gelu(z))


class FLMBlock(nn.Module):
    def __init__(self, config: FLMConfig, layer_idx: int):
        super().__init__()
        rms = config.normalization == "RMSNorm"
        self.input_norm = FLMNorm(config.hidden_size, config.norm_eps, rms)
        self.attn = FLMAttention(config, layer_idx)
        self.post_attention_norm = FLMNorm(config.hidden_size, config.norm_eps, rms)
        self.mlp = FLMMLP(config)

    def forward(self, x, positions, allowed, cache):
        x = x + self.attn(self.input_norm(x), positions, allowed, cache)
        return x + self.mlp(self.post_attention_norm(x))


class FLMPreTrainedModel(PreTrainedModel):
    config_class = FLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["FLMBlock"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, FLMNorm):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()


class FLMModel(FLMPreTrainedModel):
    def __init__(self, config: FLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([FLMBlock(config, i) for i in range(config.num_hidden_layers)])
        self.final_norm = FLMNorm(config.hidden_size, config.norm_eps, config.normalization == "RMSNorm")
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache=None,
    ) -> torch.Tensor:
        b, s = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = (torch.arange(s, device=input_ids.device) + past)[None].expand(b, s)
        x = self.embed_tokens(input_ids) * self.config.input_multiplier
        positions = FLMPositions(self.config, position_ids, x.dtype)
        query_index = torch.arange(past, past + s, device=x.device)
        key_index = torch.arange(past + s, device=x.device)
        allowed = (key_index[None, :] <= query_index[:, None])[None, None]  # [1, 1, s, past + s]
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, None, -(past + s) :].bool()
        for layer in self.layers:
            x = layer(x, positions, allowed, cache)
        return self.final_norm(x)


class FLMForCausalLM(FLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if _TIED_V5 else ["lm_head.weight"]

    def __init__(self, config: FLMConfig):
        super().__init__(config)
        self.model = FLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cache=None,
        past_key_values=None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: int = 0,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            try:
                cache = DynamicCache(config=self.config)
            except TypeError:  # pragma: no cover - older transformers
                cache = DynamicCache()
        hidden = self.model(input_ids, attention_mask, position_ids, cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden) * self.config.output_multiplier
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})
