"""The project's layer spec: megatron's local (non-Transformer-Engine) GPT layer with our modules.

Same structure and checkpoint key names as megatron's ``get_gpt_layer_local_spec`` (norm weights
are stored under ``self_attention.linear_qkv.layer_norm_*`` / ``mlp.linear_fc1.layer_norm_*``, the
Transformer-Engine names), so plain checkpoints stay loadable by stock Megatron. Our modules add
growth masks: ``FLMNorm`` (hidden), ``FLMCoreAttention`` (heads, xPos), ``FLMMLP`` (neurons),
``FLMTransformerLayer`` (depth gate).
"""

from __future__ import annotations

import functools
from typing import Optional

from megatron.core import parallel_state
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from training.engine.model.attention import FLMCoreAttention
from training.engine.model.layer import FLMTransformerLayer
from training.engine.model.mlp import FLMMLP
from training.engine.model.norms import FLMNorm


def layer_spec(config, xpos_scale_base: Optional[float] = None, fused_attention: bool = True) -> ModuleSpec:
    """``xpos_scale_base``: None for plain RoPE, else xPos with this scale base; ``fused_attention``:
    torch's ``scaled_dot_product_attention`` (else megatron's unfused core attention)."""
    return ModuleSpec(
        module=FLMTransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=FLMNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=functools.partial(
                        FLMCoreAttention, xpos_scale_base=xpos_scale_base, fused=fused_attention
                    ),
                    linear_proj=RowParallelLinear,
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=FLMNorm,
            mlp=ModuleSpec(
                module=FLMMLP,
                params={
                    "ffn_hidden_size": config.ffn_hidden_size,
                    "tp_group": parallel_state.get_tensor_model_parallel_group(),
                },
                submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
            ),
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map={
                "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
            },
        ),
    )


def block_spec(
    config, vp_stage: Optional[int] = None, xpos_scale_base: Optional[float] = None, fused_attention: bool = True
) -> TransformerBlockSubmodules:
    """Layers of this pipeline stage plus the final norm (an ``FLMNorm`` too)."""
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(
        layer_specs=[layer_spec(config, xpos_scale_base, fused_attention)] * n, layer_norm=FLMNorm
    )
