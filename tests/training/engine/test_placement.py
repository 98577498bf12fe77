"""Device placement: ``build_model`` puts every tensor of the model on the process's device.

The meta device stands in for a GPU: each (TP rank, PP rank) of a layout is simulated in this one
process (``training.plan.materialize.simulated_rank``: megatron's real groups over PyTorch's fake
process group), the chunks are built on the CPU as megatron initialises them and placed on
``meta`` by the same code that places them on ``cuda:N``; then growth masks are applied. No
parameter, buffer or tensor attribute (RoPE's ``inv_freq``, the vocabulary padding mask, growth
masks) may be left on another device.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from growth.masks import MaskState
from training.config import ModelConfig, ParallelConfig
from training.engine.model.build import build_model, tensors_off_device, transformer_config
from training.engine.model.masks import apply_masks
from training.engine.parallel import process_device, teardown
from training.plan.materialize import simulated_rank

MODEL = ModelConfig(
    num_layers=4,
    hidden_size=32,
    ffn_hidden_size=64,
    num_attention_heads=4,
    num_query_groups=2,
    vocab_size=100,
    make_vocab_size_divisible_by=8,
    seq_length=16,
    position_embedding="xpos",
    tie_embeddings=False,
)

LAYOUTS = {
    "tp2": ParallelConfig(tp=2),
    "pp2": ParallelConfig(pp=2),
    "pp2-vpp2": ParallelConfig(pp=2, virtual_pp=2),
    "tp2xpp2-sp": ParallelConfig(tp=2, pp=2, sequence_parallel=True),
}

MASKS = MaskState(
    ramp_steps=4,
    num_layers=4,
    hidden_old=24,
    hidden_new=32,
    ffn_old=48,
    ffn_new=64,
    head_is_new=[False, False, True, True],
    group_is_new=[False, True],
    new_layers=[1, 3],
)


@pytest.fixture(autouse=True)
def no_process_group():
    if dist.is_initialized():  # another test module's single-process group: simulated ranks need their own
        teardown()
    yield


def test_process_device_is_cpu_without_cuda():
    assert process_device() == (
        torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    )


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_every_tensor_is_placed_on_the_target_device(name):
    parallel = LAYOUTS[name]
    model = dataclasses.replace(MODEL, vocab_size=90)  # padded rows on the last TP rank: a padding mask
    for tp_rank in range(parallel.tp):
        for pp_rank in range(parallel.pp):
            with simulated_rank(parallel, tp_rank, pp_rank):
                config = transformer_config(model, parallel, bf16=False, gloo=True)
                chunks = build_model(model, config, device="meta")
                where = f"{name} tp rank {tp_rank} pp rank {pp_rank}"
                assert tensors_off_device(chunks, "meta") == [], where
                if tp_rank == parallel.tp - 1 and any(c.post_process for c in chunks):
                    last = [c for c in chunks if c.post_process][0]
                    assert last.output_layer.vocab_padding_mask is not None, where
                    assert "vocab_padding_mask" not in last.output_layer.state_dict()  # derived, not saved
                assert apply_masks(chunks, MASKS, step=1)
                set_masks = [
                    (n, a)
                    for c in chunks
                    for n, m in c.named_modules()
                    for a in ("hidden_mask", "head_mask", "group_mask", "neuron_mask")
                    if getattr(m, a, None) is not None
                ]
                assert set_masks, where
                assert tensors_off_device(chunks, "meta") == [], where


def test_cpu_build_is_on_the_process_device():
    with simulated_rank(ParallelConfig(), 0, 0):
        chunks = build_model(MODEL, transformer_config(MODEL, ParallelConfig(), bf16=True, gloo=True))
        assert tensors_off_device(chunks, process_device()) == []
