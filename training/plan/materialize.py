"""Build a stage's model for every (TP rank, PP rank) of its layout on the meta device.

The point is to validate a large layout (FLM-101B's 192 GPUs) on one CPU: the real builder
(``training.engine.model.build.build_model`` with the project's layer spec under megatron-core's
``parallel_state``) runs for each rank, and nothing is allocated.

How, and why this way:

- megatron's layers read their TP/PP rank and size from process groups, and ``parallel_state``
  can only create TP=4 groups in a world of at least 4 ranks. Rather than monkeypatching
  ``parallel_state``'s getters, each rank is *simulated*: ``torch.distributed`` is initialised
  with PyTorch's ``fake`` backend (``torch.testing._internal.distributed.fake_pg``: every
  collective is a no-op, no peers are needed) as rank ``r`` of a ``tp x pp`` world, and megatron's
  own ``initialize_model_parallel`` builds the real groups (DP is 1: it does not change what a rank
  holds). Everything is torn down afterwards (``simulated_rank`` is a context manager).
- ``MetaAllocation`` is a ``TorchFunctionMode`` active only while the model is built: every tensor
  factory allocates on ``meta`` even when megatron or the CPU bridge pass an explicit device (the
  norms pass ``device="cpu"``), and ``.cuda()``/``.cpu()`` of a meta tensor stays on meta (megatron
  moves the tied output weight of the last pipeline stage to the GPU before all-reducing it).

``tests/training/plan/test_materialize.py`` checks the counts against real 2-process TP2 and PP2
builds (gloo) and against the analytic counts of ``training.plan.params``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils._device import _device_constructors

from training.config import ModelConfig, ParallelConfig
from training.engine.model import build as builder
from training.engine.parallel import model_parallel_groups
from training.plan.params import RankParams, rank_params
from training.plan.report import table


class MetaAllocation(TorchFunctionMode):
    """Inside this mode every tensor is created on the meta device (see module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _device_constructors():
            kwargs["device"] = torch.device("meta")
        elif func in (torch.Tensor.cuda, torch.Tensor.cpu) and args and getattr(args[0], "is_meta", False):
            return args[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def simulated_rank(parallel: ParallelConfig, tp_rank: int, pp_rank: int) -> Iterator[None]:
    """``parallel_state`` initialised as (``tp_rank``, ``pp_rank``) of a fake ``tp x pp`` world."""
    if dist.is_initialized():
        raise RuntimeError(
            "materialize simulates its own process group; torch.distributed is already "
            "initialised in this process (run `flm plan --materialize` in a process of its own)"
        )
    world = parallel.tp * parallel.pp
    rank = pp_rank * parallel.tp + tp_rank
    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    try:
        with model_parallel_groups(parallel) as got:
            if got != (tp_rank, pp_rank):
                raise RuntimeError(f"simulated rank {rank} came out as (tp, pp) = {got}, expected {(tp_rank, pp_rank)}")
            yield
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class BuiltRank:
    """What one simulated GPU built: parameters per model chunk; ``on_meta``: all of them are."""

    tp_rank: int
    pp_rank: int
    chunk_params: tuple[int, ...]
    chunk_layers: tuple[int, ...]
    on_meta: bool

    @property
    def params(self) -> int:
        return sum(self.chunk_params)


def build_rank(
    model: ModelConfig, parallel: ParallelConfig, tp_rank: int, pp_rank: int, bf16: bool = True
) -> BuiltRank:
    """Build (on meta) the model chunks of one rank and count their parameters."""
    with simulated_rank(parallel, tp_rank, pp_rank):
        config = builder.transformer_config(model, parallel, bf16=bf16, gloo=True)
        config.perform_initialization = False
        with MetaAllocation():
            chunks = builder.build_model(model, config, device="meta")
        params = [list(c.parameters()) for c in chunks]
        return BuiltRank(
            tp_rank=tp_rank,
            pp_rank=pp_rank,
            chunk_params=tuple(sum(p.numel() for p in ps) for ps in params),
            chunk_layers=tuple(len(c.decoder.layers) for c in chunks),
            on_meta=all(p.is_meta for ps in params for p in ps),
        )


@dataclass
class MaterializedStage:
    name: str
    parallel: ParallelConfig
    built: list[BuiltRank]
    expected: list[RankParams]

    def mismatches(self) -> list[str]:
        """Ranks whose built count differs from the analytic one (empty when all agree)."""
        out = []
        for b in self.built:
            exp = self.expected[b.pp_rank]
            if b.params != exp.total or b.chunk_layers != tuple(c.layers for c in exp.chunks):
                out.append(
                    f"{self.name}: tp rank {b.tp_rank}, pp rank {b.pp_rank}: built {b.params:,} params in "
                    f"{b.chunk_layers} layers, analytic {exp.total:,} in {tuple(c.layers for c in exp.chunks)}"
                )
            if not b.on_meta:
                out.append(
                    f"{self.name}: tp rank {b.tp_rank}, pp rank {b.pp_rank}: some parameters were allocated "
                    "off the meta device"
                )
        return out


def materialize_stage(
    name: str, model: ModelConfig, parallel: ParallelConfig, tp_ranks: Optional[list[int]] = None
) -> MaterializedStage:
    """Build every pipeline rank for ``tp_ranks`` (default: all TP ranks) of the layout."""
    tps = range(parallel.tp) if tp_ranks is None else tp_ranks
    built = [build_rank(model, parallel, t, p) for p in range(parallel.pp) for t in tps]
    return MaterializedStage(name=name, parallel=parallel, built=built, expected=rank_params(model, parallel))


def render(stages: list[MaterializedStage]) -> str:
    rows = []
    for st in stages:
        for p, exp in enumerate(st.expected):
            built = [b for b in st.built if b.pp_rank == p]
            counts = sorted({b.params for b in built})
            ok = all(b.params == exp.total and b.on_meta for b in built)
            rows.append(
                [
                    st.name,
                    str(p),
                    "+".join(str(n) for n in built[0].chunk_layers),
                    str(len(built)),
                    " / ".join(f"{n:,}" for n in counts),
                    f"{exp.total:,}",
                    "yes" if ok else "NO",
                ]
            )
    text = table(
        ["stage", "pp rank", "layers", "TP ranks built", "params/GPU (built)", "params/GPU (analytic)", "match"],
        rows,
        right={1, 3, 4, 5},
    )
    problems = [m for st in stages for m in st.mismatches()]
    head = (
        "Materialized on the meta device (each rank built by training.engine.model.build under a simulated "
        "tp x pp world; nothing allocated):"
    )
    return "\n".join([head, text, *problems])
