"""The float64 reference check of a growth transition, its layers spread over the ranks.

``verify_spread`` computes what ``growth.verify.verify_weights`` computes — the old and the grown
model on the same batch, float64, the grown one with its masks at 0, every weight read from the
checkpoints — with the work divided among the ranks of the process group instead of one rank
working while the others wait:

- each model's items (its layers, then the head: final norm + readout) are cut into contiguous,
  cost-balanced blocks, one per rank (``layer_shares``; the cost of an item is its parameter count,
  which is what its reads, its float64 conversion and its matmuls scale with);
- the rank owning layer 0 embeds the batch; each rank receives the residual stream from the previous
  owner, runs its layers (one in memory at a time, read from disk by that rank only) and sends the
  result on; the owner of the head computes the logits. The old model's chain runs before the new
  one's on every rank, so rank r runs the new model's block while rank r + 1 runs the old one's;
- the owner of the new head receives the old logits (when another rank holds them), compares, and
  every rank gets the report.

Each rank reads, converts and computes ``1/world`` of both models; the activations sent are
``batch x seq x hidden`` float64 (2 x 64 x 10240 x 8 B = 10 MB at FLM-101B's width). The chain is
ordered: rank r computes after rank r - 1, so the wall time falls only to about half of one rank's
(the two models' chains overlap by one block) while the work of every rank falls as ``1/world``
(docs/growth.md, "What each transition check proves, and its cost"). The same operations run in the
same order as on one process, so the report is bit-for-bit the one-process report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from growth.masks import MaskValues
from growth.reference import embed, head_logits, run_layers
from growth.verify import VerifyReport, Weights, compare_logits


def layer_shares(costs: Sequence[float], world: int) -> list[range]:
    """Contiguous blocks of items ``0 .. len(costs) - 1``, one per rank (some may be empty when there
    are fewer items than ranks): item i goes to rank ``floor(world * (C_i + c_i / 2) / C)``, where
    ``C_i`` is the cost of the items before it and ``C`` the total, so every block's cost is within
    one item of ``C / world``. Costs must be positive."""
    if world < 1 or any(c <= 0 for c in costs):
        raise ValueError(f"layer_shares needs world >= 1 and positive costs, got world={world}, costs={costs}")
    total = float(sum(costs))
    owner, before = [], 0.0
    for c in costs:
        owner.append(min(world - 1, int(world * (before + c / 2) / total)))
        before += c
    return [range(owner.index(r), len(owner) - owner[::-1].index(r)) if r in owner else range(0) for r in range(world)]


@dataclass(frozen=True)
class Side:
    """One model of the check: its config, where its weights come from, its masks' values (None:
    unmasked), and the cost of each layer and of its head (parameter counts, for ``layer_shares``)."""

    cfg: Any
    weights: Weights
    masks: Optional[MaskValues]
    layer_cost: float
    head_cost: float

    def shares(self, world: int) -> list[range]:
        """Each rank's block of items: layers ``0 .. L - 1``, then the head as item ``L``."""
        return layer_shares([self.layer_cost] * self.cfg.num_layers + [self.head_cost], world)


def _comm_device() -> torch.device:
    """Where tensors must be for the process group's point-to-point calls: the current CUDA device
    under NCCL, else the CPU. (Decided from the group, not ``training.engine.parallel.process_device``,
    so that ``flm grow`` does not import megatron-core.)"""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _send(t: Tensor, dst: int) -> None:
    device = _comm_device()
    dist.send(torch.tensor(t.shape, dtype=torch.int64, device=device), dst)
    dist.send(t.to(device).contiguous(), dst)


def _recv(src: int, dtype: torch.dtype) -> Tensor:
    device = _comm_device()
    shape = torch.empty(3, dtype=torch.int64, device=device)
    dist.recv(shape, src)
    t = torch.empty(*shape.tolist(), dtype=dtype, device=device)
    dist.recv(t, src)
    return t.cpu()


def _chain(side: Side, tokens: Tensor, dtype: torch.dtype, rank: int, world: int) -> tuple[int, Optional[Tensor]]:
    """This rank's part of one model's forward; returns the rank that holds the logits, and them
    (None on every other rank)."""
    shares = side.shares(world)
    owners = [r for r in range(world) if len(shares[r])]
    head_rank = owners[-1]
    mine = shares[rank]
    if not len(mine):
        return head_rank, None
    at = owners.index(rank)
    n = side.cfg.num_layers
    if at == 0:
        x = embed(side.cfg, side.weights.tensor, tokens, side.masks, dtype)
    else:
        x = _recv(owners[at - 1], dtype)
    x = run_layers(side.cfg, side.weights.layer, x, range(mine.start, min(mine.stop, n)), side.masks)
    if rank != head_rank:
        _send(x, owners[at + 1])
        return head_rank, None
    return head_rank, head_logits(side.cfg, side.weights.tensor, x, side.masks)


def verify_spread(
    old: Side, new: Side, tokens: Tensor, labels: Optional[Tensor] = None, dtype: torch.dtype = torch.float64
) -> VerifyReport:
    """``growth.verify.verify_weights(old, new)`` with the layers spread over the ranks (collective
    when a process group is initialized; a plain process runs every item itself). Every rank returns
    the report, bit-for-bit the one-process report."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    with torch.no_grad():
        old_rank, old_logits = _chain(old, tokens, dtype, rank, world)
        new_rank, new_logits = _chain(new, tokens, dtype, rank, world)
        if old_rank != new_rank:
            if rank == old_rank:
                assert old_logits is not None
                _send(old_logits, new_rank)
            elif rank == new_rank:
                old_logits = _recv(old_rank, dtype)
        report: list[Optional[VerifyReport]] = [None]
        if rank == new_rank:
            assert old_logits is not None and new_logits is not None
            report[0] = compare_logits(old.cfg, old_logits, new_logits, tokens, labels)
    if world > 1:
        dist.broadcast_object_list(report, src=new_rank)
    assert report[0] is not None
    return report[0]
