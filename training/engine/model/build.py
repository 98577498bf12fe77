"""Build the model for this process's place in the TP/PP layout.

``transformer_config`` maps our ``ModelConfig`` onto megatron's ``TransformerConfig``;
``build_model`` returns the list of model chunks of this rank (one per virtual pipeline stage),
each a megatron ``GPTModel`` with the project spec. Two behaviours megatron's ``GPTModel`` lacks are
added with forward hooks, so its forward stays untouched:
- embedding output x ``input_multiplier`` (muP) x growth hidden mask;
- logits x ``output_multiplier`` (muP), and padded vocabulary rows (``vocab_size`` ..
  ``padded_vocab_size``) pushed to the dtype's minimum so they never take probability mass: the
  loss and any sampling see exactly the tokenizer's vocabulary.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from training.config import ModelConfig, ParallelConfig
from training.engine.model.spec import block_spec


def transformer_config(model: ModelConfig, parallel: ParallelConfig, *, bf16: bool, gloo: bool,
                       recompute: str = "none") -> TransformerConfig:
    dtype = torch.bfloat16 if bf16 else torch.float32
    recompute_args = {
        "none": {},
        "selective": {"recompute_granularity": "selective", "recompute_modules": ["core_attn"]},
        "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
    }[recompute]
    return TransformerConfig(
        **recompute_args,
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.query_groups,
        kv_channels=model.head_dim,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.virtual_pp,
        sequence_parallel=parallel.sequence_parallel,
        normalization=model.normalization,
        layernorm_epsilon=model.norm_eps,
        gated_linear_unit=model.activation == "swiglu",
        activation_func=F.silu if model.activation == "swiglu" else F.gelu,
        add_bias_linear=model.bias,
        add_qkv_bias=model.bias,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_std,
        use_cpu_initialization=not torch.cuda.is_available(),
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=bf16,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        attention_softmax_in_fp32=True,
        # gloo matches batched isend/irecv to one peer by order: wrong gradients (see docs)
        batch_p2p_comm=not gloo,
    )


def _embedding_hook(module, inputs, output):
    if module.input_multiplier != 1.0:
        output = output * module.input_multiplier
    if module.hidden_mask is not None:
        output = output * module.hidden_mask.to(output.dtype)
    return output


def _output_hook(module, inputs, output):
    logits, bias = output
    if module.output_multiplier != 1.0:
        logits = logits * module.output_multiplier
    if module.vocab_padding_mask is not None:
        logits = logits.masked_fill(module.vocab_padding_mask, torch.finfo(logits.dtype).min)
    return logits, bias


def _vocab_padding_mask(vocab_size: int, padded: int, device) -> Optional[torch.Tensor]:
    if padded == vocab_size:
        return None
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    per_rank = padded // tp
    start, end = rank * per_rank, (rank + 1) * per_rank
    if end <= vocab_size:  # decided from the sizes, not the tensor: works on the meta device too
        return None
    return torch.arange(start, end, device=device) >= vocab_size


def build_model_chunk(model: ModelConfig, config: TransformerConfig, *, pre_process: bool, post_process: bool,
                      vp_stage: Optional[int] = None) -> GPTModel:
    tp = config.tensor_model_parallel_size
    padded = model.padded_vocab_size(tp)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=block_spec(
            config, vp_stage, model.xpos_scale_base if model.position_embedding == "xpos" else None),
        vocab_size=padded,
        max_sequence_length=model.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=model.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=model.rotary_base,
        vp_stage=vp_stage,
    )
    if pre_process:
        gpt.embedding.input_multiplier = model.input_multiplier
        gpt.embedding.hidden_mask = None
        gpt.embedding.register_forward_hook(_embedding_hook)
    if post_process:
        gpt.output_layer.output_multiplier = model.output_multiplier
        device = next(gpt.parameters()).device
        gpt.output_layer.vocab_padding_mask = _vocab_padding_mask(model.vocab_size, padded, device)
        gpt.output_layer.register_forward_hook(_output_hook)
    return gpt


def build_model(model: ModelConfig, config: TransformerConfig) -> list[GPTModel]:
    """Model chunks of this rank (one per virtual pipeline stage). Needs parallel_state initialised."""
    vpp = config.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        chunks.append(
            build_model_chunk(
                model, config,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
                vp_stage=stage,
            )
        )
    return chunks
