"""FLM-shaped exports under accelerate's ``device_map`` (``flm iq --model hf --parallelize``, lm-eval's
``parallelize=True``): blocks split over devices compute the same logits and generations as the
undispatched model, and each block gets its RoPE/xPos tables on its own device.

On this CPU-only machine the split is CPU + disk offload (real dispatch hooks, weights loaded from
the offload folder per call) for the values, and CPU + meta for the placement: an op mixing a CPU
and a meta tensor raises, as one mixing ``cuda:0`` and ``cuda:1`` tensors does, so the meta half
stands in for a second accelerator.
"""

from __future__ import annotations

import pytest
import torch

from tests.training.hf.hf_helpers import FLM_VARIANTS, flm_variant, random_state, write_checkpoint
from training.hf.export import export_checkpoint

#: xPos tied and untied (GQA, another head dim), and RoPE through the FLM code
DISPATCHED = ["xpos-neox-gqa-tied-bias", "xpos-llama-untied-kvchannels", "rmsnorm-gelu-tied"]
LAYERS = 4


def _export(tmp_path, name):
    cfg = flm_variant(name, num_layers=LAYERS)
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, random_state(cfg, seed=DISPATCHED.index(name)))
    export_checkpoint(ckpt, tmp_path / "hf", no_tokenizer=True, architecture=FLM_VARIANTS[name][2])
    return cfg, tmp_path / "hf"


def _device_map(devices: list[str]) -> dict[str, str]:
    """Block ``i`` on ``devices[i]``, the final norm with the last block, embedding and head with the
    first (a tied head must stay with its embedding: accelerate offloads the embedding's copy only)."""
    dm = {"model.embed_tokens": devices[0]}
    dm.update({f"model.layers.{i}": d for i, d in enumerate(devices)})
    dm.update({"model.final_norm": devices[-1], "lm_head": devices[0]})
    return dm


def _load(out, **kwargs):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        str(out), trust_remote_code=True, dtype=torch.float32, **kwargs
    ).eval()


@pytest.mark.parametrize("name", DISPATCHED)
def test_blocks_offloaded_to_disk_compute_the_same_logits_and_generations(name, tmp_path):
    cfg, out = _export(tmp_path, name)
    plain = _load(out)
    device_map = _device_map(["cpu", "disk", "cpu", "disk"])
    spread = _load(out, device_map=device_map, offload_folder=str(tmp_path / "offload"))
    assert spread.hf_device_map == device_map
    assert any(p.device.type == "meta" for p in spread.model.layers[1].parameters())  # really offloaded
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 13), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, :4] = 0  # left padding: attention mask and position ids reach every block
    with torch.no_grad():
        want, got = (
            plain(input_ids=tokens, attention_mask=mask).logits,
            spread(input_ids=tokens, attention_mask=mask).logits,
        )
        assert got.device.type == "cpu" and torch.equal(got, want)
        assert want.abs().max() > 1.0
        kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        assert torch.equal(spread.generate(tokens, **kwargs), plain.generate(tokens, **kwargs))


@pytest.mark.parametrize("name", ["xpos-neox-gqa-tied-bias", "rmsnorm-gelu-tied"])
def test_each_block_gets_its_position_tables_on_its_own_device(name, tmp_path):
    from accelerate import dispatch_model
    from transformers.cache_utils import DynamicCache

    cfg, out = _export(tmp_path, name)
    model = dispatch_model(_load(out), _device_map(["cpu", "cpu", "meta", "meta"]), main_device="cpu")
    seen: list[torch.device] = []
    for module in model.modules():
        if type(module).__name__ == "FLMAttention":  # the export directory's copy of the class
            module.register_forward_hook(lambda _m, _args, result: seen.append(result.device))
    tokens = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    cache = DynamicCache()
    with torch.no_grad():
        # the base model: the top-level hook would copy the (meta) result back to the CPU
        hidden = model.model(tokens, cache=cache)
        step = model.model(tokens[:, :1], cache=cache)  # one cached decoding step, positions from 7
    where = [torch.device(d) for d in ("cpu", "cpu", "meta", "meta")]
    assert seen == where + where
    assert hidden.device.type == "meta" and hidden.shape == (2, 7, cfg.hidden_size)
    assert step.shape == (2, 1, cfg.hidden_size) and cache.get_seq_length() == 8
