"""Build the model for this process's place in the TP/PP layout.

``transformer_config`` maps our ``ModelConfig`` onto megatron's ``TransformerConfig``;
``build_model`` returns the list of model chunks of this rank (one per virtual pipeline stage),
each a megatron ``GPTModel`` with the project spec. Behaviours megatron's ``GPTModel`` lacks are
added with forward hooks, so its forward stays untouched (under ``data.reset_at_eos`` also its rotary
embedding reading the batch's position ids, ``documents.read_position_ids``):
- embedding output x ``input_multiplier`` (muP) x growth hidden mask;
- logits x ``output_multiplier`` (x ``1 / m`` under μP: ``ModelConfig.readout_multiplier``), and
  padded vocabulary rows (``vocab_size`` .. ``padded_vocab_size``) pushed to the dtype's minimum so
  they never take probability mass: the loss and any sampling see exactly the tokenizer's vocabulary.

μP (``model.mup``, docs/mup.md): the attention scale ``attention_multiplier / d_head`` is megatron's
``TransformerConfig.softmax_scale`` (both core-attention paths read it); the hidden matrices (QKV,
attention output, FC1, FC2: the parameters marked ``hidden_matrix``, which the optimizer's μP
parameter groups select) are drawn as megatron draws them and multiplied by ``1 / sqrt(m)``, so their
std is ``init_std / sqrt(m)`` (``/ sqrt(2 * num_layers)`` more for the attention output and FC2, as
megatron's scaled init); the embedding and the untied output layer keep ``init_std``.

Device placement (as Megatron-LM does it): the chunks are built where megatron's initialisation
puts them and then moved, once, by ``place_model`` to the process's device
(``training.engine.parallel.process_device``, or an explicit ``device``). Everything a chunk owns
moves with it: parameters, buffers (the padded-vocabulary mask is a non-persistent buffer) and
the plain tensor attributes megatron and our hooks keep on modules (RoPE's ``inv_freq``, growth
masks). Growth masks applied later are created on the device of the chunk's parameters
(``training.engine.model.masks``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from training.config import ModelConfig, ParallelConfig
from training.engine.fusions import OFF, Fusions
from training.engine.model.documents import read_position_ids
from training.engine.model.spec import block_spec
from training.engine.parallel import process_device


def transformer_config(
    model: ModelConfig,
    parallel: ParallelConfig,
    *,
    bf16: bool,
    gloo: bool,
    recompute: str = "none",
    fusions: Fusions = OFF,
) -> TransformerConfig:
    """megatron's config of ``model`` under ``parallel``; megatron's fusions as ``fusions`` decides
    (``training.engine.fusions.decide``; default all off). RoPE fusion (Transformer Engine's kernel,
    not a dependency) and the persistent layer norm (Apex's, for megatron's norms, not ``FLMNorm``)
    stay off."""
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
        **fusions.transformer_config_kwargs(),
        apply_rope_fusion=False,
        persist_layer_norm=False,
        attention_softmax_in_fp32=True,
        # None: megatron's 1/sqrt(d_head); μP: attention_multiplier / d_head
        softmax_scale=None if model.mup is None else model.attention_scale,
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


def _vocab_padding_mask(vocab_size: int, padded: int) -> Optional[torch.Tensor]:
    """True on this TP rank's padded rows (None when it has none); created on the default device and
    moved with the chunk by ``place_model``."""
    if padded == vocab_size:
        return None
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    per_rank = padded // tp
    start, end = rank * per_rank, (rank + 1) * per_rank
    if end <= vocab_size:  # decided from the sizes, not the tensor: works on the meta device too
        return None
    return torch.arange(start, end) >= vocab_size


#: the attribute that marks a hidden matrix (μP: width-scaled init, Adam LR ``lr / m``)
HIDDEN_MATRIX_ATTR = "hidden_matrix"


def hidden_matrices(gpt: GPTModel) -> list[torch.nn.Parameter]:
    """The hidden matrices of a chunk: QKV, attention output, FC1 and FC2 weights of its layers
    (``growth.roles.HIDDEN_MATRICES``); not the embedding, the output layer, norms or biases."""
    out = []
    for layer in gpt.decoder.layers if hasattr(gpt, "decoder") else []:
        attn, mlp = layer.self_attention, layer.mlp
        out += [attn.linear_qkv.weight, attn.linear_proj.weight, mlp.linear_fc1.weight, mlp.linear_fc2.weight]
    return out


def build_model_chunk(
    model: ModelConfig,
    config: TransformerConfig,
    *,
    pre_process: bool,
    post_process: bool,
    vp_stage: Optional[int] = None,
    attention: str = "fused",
    documents: bool = False,
) -> GPTModel:
    tp = config.tensor_model_parallel_size
    padded = model.padded_vocab_size(tp)
    gpt = GPTModel(
        config=config,
        transformer_layer_spec=block_spec(
            config,
            vp_stage,
            model.xpos_scale_base if model.position_embedding == "xpos" else None,
            fused_attention=attention == "fused",
        ),
        vocab_size=padded,
        max_sequence_length=model.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=model.tie_embeddings,
        position_embedding_type="rope",
        rotary_base=model.rotary_base,
        vp_stage=vp_stage,
    )
    if documents:  # data.reset_at_eos: RoPE at the batch's (per-document) position ids
        read_position_ids(gpt)
    if pre_process:
        gpt.embedding.input_multiplier = model.input_multiplier
        gpt.embedding.hidden_mask = None
        gpt.embedding.register_forward_hook(_embedding_hook)
    for param in hidden_matrices(gpt):
        setattr(param, HIDDEN_MATRIX_ATTR, True)
        if model.mup is not None:  # μP init: megatron's draw x 1/sqrt(m) (std init_std/sqrt(m))
            with torch.no_grad():
                param.mul_(1.0 / math.sqrt(model.width_multiplier))
    if post_process:
        gpt.output_layer.output_multiplier = model.readout_multiplier
        # a buffer, so that moving the chunk moves it; not persistent: it is derived from the config
        gpt.output_layer.register_buffer(
            "vocab_padding_mask", _vocab_padding_mask(model.vocab_size, padded), persistent=False
        )
        gpt.output_layer.register_forward_hook(_output_hook)
    return gpt


def place_model(chunks: list[torch.nn.Module], device: torch.device | str) -> list[torch.nn.Module]:
    """Move every tensor of ``chunks`` to ``device`` (in place; returns ``chunks``): parameters and
    buffers with ``Module.to``, and the plain tensor attributes of their modules (megatron's RoPE
    ``inv_freq``, the growth masks and depth gates) that ``Module.to`` does not see."""
    device = torch.device(device)
    for chunk in chunks:
        chunk.to(device)
        for module in chunk.modules():
            for name, value in list(vars(module).items()):
                if isinstance(value, torch.Tensor) and value.device != device:
                    setattr(module, name, value.to(device))
    return chunks


def tensors_off_device(chunks: list[torch.nn.Module], device: torch.device | str) -> list[str]:
    """Names of every parameter, buffer and tensor attribute of ``chunks`` not on ``device`` (empty
    when the placement is complete)."""
    device = torch.device(device)
    off = []
    for i, chunk in enumerate(chunks):
        for name, module in chunk.named_modules():
            tensors = dict(module.named_parameters(recurse=False))
            tensors.update(module.named_buffers(recurse=False))
            tensors.update({k: v for k, v in vars(module).items() if isinstance(v, torch.Tensor)})
            off += [
                f"chunk {i}: {name}.{k} on {v.device}"
                for k, v in tensors.items()
                if v is not None and v.device != device
            ]
    return off


def build_model(
    model: ModelConfig,
    config: TransformerConfig,
    *,
    device: Optional[torch.device | str] = None,
    attention: str = "fused",
    documents: bool = False,
) -> list[GPTModel]:
    """Model chunks of this rank (one per virtual pipeline stage) on ``device`` (default: the
    process's device). Needs parallel_state initialised. ``attention``: ``fused`` (torch's
    ``scaled_dot_product_attention``) or ``unfused`` (megatron's ``DotProductAttention``);
    ``documents``: the chunks read per-document position ids (``data.reset_at_eos``,
    ``training.engine.model.documents``; the attention mask comes with each batch)."""
    vpp = config.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        chunks.append(
            build_model_chunk(
                model,
                config,
                pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
                post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
                vp_stage=stage,
                attention=attention,
                documents=documents,
            )
        )
    return place_model(chunks, process_device() if device is None else device)
