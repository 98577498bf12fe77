"""Process groups: torch.distributed + megatron-core ``parallel_state`` for a TP/PP/DP layout.

gloo on CPU, NCCL on CUDA, from the same code. Works under torchrun (env:// rendezvous) and as a
single plain process (world size 1, a free local port).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from training.config import ParallelConfig
from training.local_launch import free_port


@dataclass(frozen=True)
class Layout:
    world_size: int
    rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    backend: str

    @property
    def is_logging_rank(self) -> bool:
        """The rank that prints and writes metrics: last pipeline stage, first TP and DP rank."""
        return self.tp_rank == 0 and self.dp_rank == 0 and self.pp_rank == self.pp - 1


def process_device() -> torch.device:
    """The device this process computes on: the current CUDA device (set from ``LOCAL_RANK`` by
    ``init_process_group``) when CUDA is available, else the CPU. The one place that decides it:
    the model (``build_model``), batches and loss reductions all ask here."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_process_group(timeout_minutes: Optional[float] = None) -> None:
    """Start the default process group (NCCL on CUDA, else gloo) unless one is running. A collective
    that waits longer than ``timeout_minutes`` (default: ``parallel.timeout_minutes``'s default)
    fails instead of hanging. Called once per job: a staged run passes its stages' largest
    timeout (``RunConfig.timeout_minutes``); a group already running keeps its timeout."""
    if dist.is_initialized():
        return
    minutes = ParallelConfig.timeout_minutes if timeout_minutes is None else timeout_minutes
    timeout = datetime.timedelta(minutes=minutes)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if "RANK" not in os.environ:  # plain single process; leave os.environ alone for child processes
        dist.init_process_group(
            backend=backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, timeout=timeout
        )
    else:
        dist.init_process_group(backend=backend, timeout=timeout)


def setup_layout(parallel: ParallelConfig, seed: int) -> Layout:
    """(Re)initialise megatron's model-parallel groups for ``parallel`` and seed the RNGs; the
    process group is started first when none is running, and megatron's TP/PP/DP groups get
    ``parallel.timeout_minutes`` too."""
    init_process_group(parallel.timeout_minutes)
    world = dist.get_world_size()
    dp = parallel.data_parallel_size(world)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.virtual_pp,
        distributed_timeout_minutes=parallel.timeout_minutes,
    )
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return Layout(
        world_size=world,
        rank=dist.get_rank(),
        tp=parallel.tp,
        pp=parallel.pp,
        dp=dp,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        backend=dist.get_backend(),
    )


@contextlib.contextmanager
def model_parallel_groups(parallel: ParallelConfig) -> Iterator[tuple[int, int]]:
    """megatron's ``parallel_state`` for ``parallel``'s TP/PP (and virtual PP) on the process group
    that is already initialised (no gloo side groups); yields this rank's (tp rank, pp rank) and
    destroys the groups on exit."""
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.virtual_pp,
        create_gloo_process_groups=False,
        distributed_timeout_minutes=parallel.timeout_minutes,
    )
    try:
        yield parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_pipeline_model_parallel_rank()
    finally:
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()


def teardown() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
