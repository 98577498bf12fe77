"""The ``parallel:`` section (``ParallelConfig``: TP/PP/DP, sequence parallelism, the distributed
optimizer, overlap) and the layouts the DeepSpeed engine accepts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from training.config_base import ConfigError, join_key


@dataclass
class ParallelConfig:
    """Process layout. world size = tp x pp x dp; dp null means 'whatever is left'."""

    tp: int = 1
    pp: int = 1
    dp: Optional[int] = None
    #: virtual pipeline stages per rank (interleaved 1F1B); null for plain 1F1B
    virtual_pp: Optional[int] = None
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    #: overlap the data-parallel gradient reduction with the backward pass (megatron DDP's
    #: overlap_grad_reduce); null: on under NCCL (GPUs), off on gloo (CPU), where it does not apply
    overlap_grad_reduce: Optional[bool] = None
    #: overlap the distributed optimizer's parameter all-gather with the next forward pass (megatron
    #: DDP's overlap_param_gather; needs distributed_optimizer and overlap_grad_reduce); null: on
    #: under NCCL with the distributed optimizer, off otherwise
    overlap_param_gather: Optional[bool] = None
    #: minutes a collective may wait before the process group fails it (torch.distributed's timeout,
    #: also megatron's TP/PP/DP groups'): long enough for the longest phase where ranks wait for each
    #: other (a checkpoint save or load + verify; `flm plan` recommends a value per stage), short
    #: enough that a hung rank ends the job instead of holding every GPU. A staged job's one process
    #: group takes the largest value of its stages (``RunConfig.timeout_minutes``)
    timeout_minutes: float = 30.0

    def validate(self, path: str) -> None:
        for name in ("tp", "pp"):
            if getattr(self, name) < 1:
                raise ConfigError(join_key(path, name), "must be >= 1")
        if not self.timeout_minutes > 0:
            raise ConfigError(join_key(path, "timeout_minutes"), f"must be > 0 (minutes), got {self.timeout_minutes}")
        if self.dp is not None and self.dp < 1:
            raise ConfigError(join_key(path, "dp"), "must be >= 1 or null")
        if self.virtual_pp is not None and (self.virtual_pp < 2 or self.pp < 2):
            raise ConfigError(join_key(path, "virtual_pp"), "needs pp >= 2 and a value >= 2 (or null)")
        if self.sequence_parallel and self.tp == 1:
            raise ConfigError(join_key(path, "sequence_parallel"), "needs tp >= 2; set it to false for tp=1")
        if self.overlap_param_gather and not self.distributed_optimizer:
            raise ConfigError(
                join_key(path, "overlap_param_gather"),
                "needs distributed_optimizer: true (only the distributed optimizer gathers parameters)",
            )
        if self.overlap_param_gather and self.overlap_grad_reduce is False:
            raise ConfigError(join_key(path, "overlap_param_gather"), "needs overlap_grad_reduce (true or null)")

    def overlap(self, backend: str) -> tuple[bool, bool]:
        """(overlap_grad_reduce, overlap_param_gather) for a process group of ``backend`` (the null
        defaults resolved: on under NCCL, off on gloo)."""
        grad = self.overlap_grad_reduce if self.overlap_grad_reduce is not None else backend == "nccl"
        param = (
            self.overlap_param_gather
            if self.overlap_param_gather is not None
            else grad and self.distributed_optimizer and backend == "nccl"
        )
        return grad, param

    def data_parallel_size(self, world_size: int) -> int:
        """DP size for ``world_size`` processes, or ConfigError if the layout does not fit."""
        mp = self.tp * self.pp
        if world_size % mp:
            raise ConfigError(
                "parallel",
                f"world size {world_size} is not divisible by tp x pp = {self.tp} x {self.pp} = {mp}; "
                f"use a process count that is a multiple of {mp}",
            )
        dp = world_size // mp
        if self.dp is not None and self.dp != dp:
            raise ConfigError(
                "parallel.dp",
                f"tp x pp x dp = {self.tp} x {self.pp} x {self.dp} = {mp * self.dp} but "
                f"{world_size} processes were launched; set parallel.dp={dp} or null",
            )
        return dp


def check_deepspeed_layout(parallel: ParallelConfig, path: str) -> None:
    """``engine: deepspeed`` trains with data parallelism only (ZeRO shards over DP ranks); the
    megatron-only layout settings are refused with the key to change."""
    for name, allowed in (
        ("tp", 1),
        ("pp", 1),
        ("virtual_pp", None),
        ("sequence_parallel", False),
        ("distributed_optimizer", False),
    ):
        value = getattr(parallel, name)
        if value != allowed or type(value) is not type(allowed):
            fix = "null" if allowed is None else "false" if allowed is False else allowed
            why = (
                "ZeRO partitions the optimizer state already (deepspeed.zero_stage)"
                if name == "distributed_optimizer"
                else "or use engine: megatron for tensor/pipeline parallelism"
            )
            raise ConfigError(
                join_key(path, name),
                f"engine: deepspeed trains with data parallelism only, got {name}={value!r}; set {name}={fix} ({why})",
            )
