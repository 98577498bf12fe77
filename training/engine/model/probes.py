"""Activation probes: the mean |activation| of the model's sites, recorded by forward hooks.

μP's coordinate check (``training.mup.coord_check``) watches four sites of the megatron model as
it trains a few steps: the embedding output (after the input multiplier), every layer's attention
block output and MLP block output (megatron returns a linear layer's bias separately, to be fused
into bias-dropout-add; it is added back here, so the value is what joins the residual stream), and
the logits (after the output multiplier, the tokenizer's ``vocab_size`` columns only: padded
vocabulary columns are set to the dtype's minimum and would swamp the mean). The hooks only read;
the forward is unchanged.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

import torch
from megatron.core.models.gpt import GPTModel

#: the sites, in model order
SITES = ("embedding", "attention", "mlp", "logits")


def gpt_models(chunks: list[torch.nn.Module]) -> list[GPTModel]:
    """The ``GPTModel`` inside each chunk (under DDP / ``Float16Module`` wrappers)."""
    found = [m for chunk in chunks for m in chunk.modules() if isinstance(m, GPTModel)]
    if len(found) != len(chunks):
        raise ValueError(f"expected one GPTModel per chunk, found {len(found)} in {len(chunks)} chunks")
    return found


def _tensor(output: Any) -> torch.Tensor:
    """A module's output as one tensor: megatron's ``(output, bias)`` pairs with the bias added."""
    if isinstance(output, tuple):
        out, bias = output[0], output[1] if len(output) > 1 else None
        return out if bias is None else out + bias
    return output


class ActivationProbe:
    """Forward hooks that sum |x| and count elements per site (and per layer) until ``take``.

    Use as a context manager (the hooks are removed on exit)::

        with ActivationProbe(trainer.mask_chunks, vocab_size=cfg.model.vocab_size) as probe:
            trainer.step()
            means = probe.take()   # {"embedding": {"mean": ..., "layers": [...]}, ...}
    """

    def __init__(self, chunks: list[torch.nn.Module], *, vocab_size: int):
        self.vocab_size = vocab_size
        self._sums: dict[tuple[str, int], float] = defaultdict(float)
        self._counts: dict[tuple[str, int], int] = defaultdict(int)
        self._handles: list[Any] = []
        layer = 0
        for gpt in gpt_models(chunks):
            if gpt.pre_process:
                self._hook(gpt.embedding, "embedding", 0)
            for module in gpt.decoder.layers:
                self._hook(module.self_attention, "attention", layer)
                self._hook(module.mlp, "mlp", layer)
                layer += 1
            if gpt.post_process:
                self._hook(gpt.output_layer, "logits", 0)

    def _hook(self, module: torch.nn.Module, site: str, index: int) -> None:
        def record(mod, inputs, output):
            x = _tensor(output).detach()
            if site == "logits":
                x = x[..., : self.vocab_size]
            self._sums[(site, index)] += float(x.float().abs().sum())
            self._counts[(site, index)] += x.numel()

        # registered after build.py's hooks, so it sees the multiplied embedding output and logits
        self._handles.append(module.register_forward_hook(record))

    def take(self) -> dict[str, dict[str, Any]]:
        """Per site: ``layers`` (the mean |x| of each layer's module, in layer order; one entry for
        the embedding and the logits) and ``mean`` (their average); the sums are then reset. Sites
        this process's pipeline stage does not hold, or that did not run, are left out."""
        out: dict[str, dict[str, Any]] = {}
        for site in SITES:
            keys = sorted(k for k in self._counts if k[0] == site and self._counts[k])
            if keys:
                layers = [self._sums[k] / self._counts[k] for k in keys]
                out[site] = {"mean": sum(layers) / len(layers), "layers": layers}
        self._sums.clear()
        self._counts.clear()
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ActivationProbe:
        return self

    def __exit__(self, *exc: Optional[BaseException]) -> None:
        self.remove()
