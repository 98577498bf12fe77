"""A stage's checkpoint: its size, how long a save and a load + verify keep every rank waiting, and
the process-group timeout (``parallel.timeout_minutes``) and Slurm signal lead time that cover them.

Size: the checkpoint keeps per parameter, in a bf16 run, the bf16 weight (2 B), the fp32 master
weight (4 B) and Adam's m and v (4 + 4 B): 14 B; in an fp32 run the weight is its own master: 12 B
(both engines: the megatron engine's optimizer state in the ``fully_reshardable`` format, the
DeepSpeed engine's full fp32 masters and moments under the same keys).

Save (``training.checkpoint.atomic``; every rank waits at barriers for the slowest):

- write: megatron's ``dist_checkpointing`` keeps only the main replica, so the ranks of DP rank 0
  (``tp x pp`` ranks; the distributed optimizer gathers its state onto them) write every byte. They
  sit on ``writer_nodes`` nodes (megatron's rank order tp-dp-pp: rank = tp_rank + tp·(dp_rank +
  dp·pp_rank)). The DeepSpeed engine's ranks each write a byte-balanced share (all nodes).
  ``write_s = bytes / (writer_nodes x write bandwidth per node)``.
- hash: every rank hashes its byte-balanced share of the files (the manifest), so each node reads
  ``bytes / nodes``: ``hash_s = bytes / (nodes x read bandwidth per node)``.

Load + verify (``training.checkpoint.integrity``): every rank reads the slice of the whole
checkpoint its TP/PP rank needs (DP replicas read the same bytes: ``fully_reshardable`` loads
the full state per model-parallel slice), ``bytes / (tp x pp)``, while the ranks hash their shares:
``load_s = (ranks per node x bytes / (tp x pp) + bytes / nodes) / read bandwidth per node``. This
is an upper bound: ranks of one node reading the same bytes may share the page cache.

Recommendations: the timeout is twice the longer of the two plus 5 minutes, rounded up to 5
minutes; the signal lead time (``launch/slurm/submit.sh``: the job is told to save this long
before its time limit) is 1.5 x the save plus 2 minutes for the step in flight, rounded up to a
minute, never below the 5 minutes the launcher used before it asked the planner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from training.config import ModelConfig, ParallelConfig, TrainConfig
from training.model_size import total_params

GB = 1e9
#: bytes per parameter a checkpoint keeps (see the module doc)
CHECKPOINT_BYTES_PER_PARAM = {"bf16": 14, "fp32": 12}
#: assumed write / read bandwidth of one node to the checkpoint filesystem (GB/s; flm plan
#: --ckpt-write-gbps / --ckpt-read-gbps): conservative figures for a parallel filesystem client
DEFAULT_WRITE_GBPS = 1.0
DEFAULT_READ_GBPS = 2.0
#: the signal lead time is never shorter than this (seconds; the launcher's former fixed value)
MIN_SIGNAL_LEAD_S = 300


@dataclass(frozen=True)
class CheckpointTime:
    """Size of a stage's checkpoint and the seconds its save and its load + verify take."""

    bytes: float
    nodes: int
    writer_nodes: int
    write_s: float
    hash_s: float
    load_s: float

    @property
    def save_s(self) -> float:
        return self.write_s + self.hash_s

    @property
    def longest_s(self) -> float:
        """The longest phase in which ranks wait for each other at a collective."""
        return max(self.save_s, self.load_s)

    @property
    def timeout_minutes(self) -> int:
        """Recommended ``parallel.timeout_minutes``: 2 x the longest phase + 5 min, rounded up to 5 min."""
        return 5 * math.ceil((2 * self.longest_s / 60 + 5) / 5)

    @property
    def signal_lead_s(self) -> int:
        """Seconds before the time limit a job should be told to save and stop: 1.5 x the save plus
        2 minutes for the step in flight, rounded up to a minute, at least ``MIN_SIGNAL_LEAD_S``."""
        return max(MIN_SIGNAL_LEAD_S, 60 * math.ceil((1.5 * self.save_s + 120) / 60))


def precision_of(train: TrainConfig) -> Literal["bf16", "fp32"]:
    """The precision the planner sizes a stage in: fp32, or bf16 (``auto`` trains bf16 on GPUs)."""
    return "fp32" if train.precision == "fp32" else "bf16"


def writer_ranks(parallel: ParallelConfig, dp: int, engine: str) -> list[int]:
    """The global ranks that write a checkpoint's files (see the module doc)."""
    world = parallel.tp * parallel.pp * dp
    if engine == "deepspeed":
        return list(range(world))
    return [t + parallel.tp * dp * p for p in range(parallel.pp) for t in range(parallel.tp)]


def checkpoint_time(
    model: ModelConfig,
    parallel: ParallelConfig,
    dp: int,
    *,
    precision: Literal["bf16", "fp32"],
    engine: str,
    gpus_per_node: int,
    write_gbps: float = DEFAULT_WRITE_GBPS,
    read_gbps: float = DEFAULT_READ_GBPS,
) -> CheckpointTime:
    """The checkpoint of a stage training ``model`` under ``parallel`` with ``dp`` DP ranks."""
    size = total_params(model, parallel.tp) * CHECKPOINT_BYTES_PER_PARAM[precision]
    world = parallel.tp * parallel.pp * dp
    nodes = math.ceil(world / gpus_per_node)
    writer_nodes = len({r // gpus_per_node for r in writer_ranks(parallel, dp, engine)})
    per_node = min(world, gpus_per_node)
    return CheckpointTime(
        bytes=size,
        nodes=nodes,
        writer_nodes=writer_nodes,
        write_s=size / (writer_nodes * write_gbps * GB),
        hash_s=size / (nodes * read_gbps * GB),
        load_s=(per_node * size / (parallel.tp * parallel.pp) + size / nodes) / (read_gbps * GB),
    )
