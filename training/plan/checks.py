"""Layout checks of one stage: each returns ``Finding``s that name the config key and the fix.

Errors mean the stage cannot run as configured (the GPU count does not match the layout, the
batch does not split, it does not fit in memory even with full recomputation); warnings mean it
runs but wastes time or memory (pipeline never fills, unbalanced pipeline ranks, TP spanning
nodes, activation recomputation needed, a process-group timeout shorter than a checkpoint save or
load + verify may take). Divisibility of heads, groups, FFN and layers by TP/PP
is already enforced when the config loads (``training/config.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from training.config import ModelConfig, ParallelConfig, TrainConfig
from training.config_base import ConfigError
from training.plan.ckpt import CheckpointTime
from training.plan.memory import RECOMPUTE_MODES, RankMemory, Recompute, worst_rank
from training.plan.params import RankParams

GIB = 1024**3
#: a pipeline rank more than this much above the mean (params or FLOPs) is reported
IMBALANCE = 0.10


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.key}: {self.message}"


def _k(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def override_key(key: str) -> str:
    """``stages[2].parallel.dp`` -> ``stages.2.parallel.dp`` (the dotted-override spelling)."""
    return key.replace("[", ".").replace("]", "")


def data_parallel(parallel: ParallelConfig, gpus: Optional[int], where: str) -> tuple[int, list[Finding]]:
    """DP size of the stage and the findings about ``tp x pp x dp == gpus``.

    Raises ``ConfigError`` when no DP size can be derived at all (dp null and no --gpus, or a GPU
    count that tp x pp does not divide)."""
    mp = parallel.tp * parallel.pp
    dp_override = override_key(_k(where, "parallel.dp"))
    if gpus is None:
        if parallel.dp is None:
            raise ConfigError(
                _k(where, "parallel.dp"),
                f"is null, so the stage's GPU count is unknown; pass --gpus N or set {dp_override}",
            )
        return parallel.dp, []
    if gpus % mp:
        raise ConfigError(
            _k(where, "parallel"),
            f"--gpus {gpus} is not divisible by tp x pp = {parallel.tp} x {parallel.pp} = {mp}; "
            f"use a multiple of {mp} GPUs or change tp/pp",
        )
    dp = gpus // mp
    if parallel.dp is not None and parallel.dp != dp:
        return parallel.dp, [
            Finding(
                "error",
                _k(where, "parallel.dp"),
                f"tp x pp x dp = {parallel.tp} x {parallel.pp} x {parallel.dp} = {mp * parallel.dp} but --gpus is "
                f"{gpus}; set {dp_override}={dp} (or null), or plan for {mp * parallel.dp} GPUs",
            )
        ]
    return dp, []


def batch(train: TrainConfig, parallel: ParallelConfig, dp: int, where: str) -> tuple[int, list[Finding]]:
    """Micro-batches per DP rank per step, and findings about the batch split and the bubble."""
    try:
        m = train.micro_batches(dp)
    except ConfigError as err:
        return 1, [Finding("error", _k(where, "train.global_batch_size"), err.message)]
    findings = []
    if m < parallel.pp:
        findings.append(
            Finding(
                "warning",
                _k(where, "train.global_batch_size"),
                f"{m} micro-batches per step for pp={parallel.pp}: the pipeline never fills; raise "
                f"global_batch_size to at least {parallel.pp * train.micro_batch_size * dp} or lower micro_batch_size",
            )
        )
    return m, findings


def pipeline_balance(
    model: ModelConfig, parallel: ParallelConfig, ranks: list[RankParams], where: str
) -> tuple[float, list[Finding]]:
    """Max over mean of the per-rank FLOPs; findings when params or FLOPs are unbalanced."""
    if parallel.pp == 1:
        return 1.0, []
    layer_flops = (
        6
        * (
            model.hidden_size * (model.num_attention_heads + 2 * model.query_groups) * model.head_dim
            + model.num_attention_heads * model.head_dim * model.hidden_size
            + model.hidden_size * model.ffn_hidden_size * (3 if model.activation == "swiglu" else 2)
        )
        + 12 * model.seq_length * model.head_dim * model.num_attention_heads
    )
    flops = [
        r.layers * layer_flops + (6 * model.vocab_size * model.hidden_size if r.output_layer else 0) for r in ranks
    ]
    findings = []
    for what, values in (("parameters", [r.total for r in ranks]), ("FLOPs per token", flops)):
        mean = sum(values) / len(values)
        top = max(range(len(values)), key=values.__getitem__)
        if values[top] > (1 + IMBALANCE) * mean:
            findings.append(
                Finding(
                    "warning",
                    _k(where, "parallel.pp"),
                    f"pipeline rank {top} has {100 * (values[top] / mean - 1):.0f}% more {what} than the mean "
                    f"(embedding/output layer on the end ranks); the slowest rank sets the pace: use fewer pipeline "
                    f"stages or a deeper model",
                )
            )
    return max(flops) / (sum(flops) / len(flops)), findings


def memory(
    ranks: list[RankMemory], capacity: float, where: str, configured: Recompute = "none"
) -> tuple[Optional[Recompute], list[Finding]]:
    """Whether the stage fits ``capacity`` bytes on every rank with the recomputation it is configured
    with (``train.recompute``): that mode when it fits; else an error naming ``train.recompute`` and
    the least mode that would fit (None when none does)."""
    worst = worst_rank(ranks, configured)
    if worst.total(configured) <= capacity:
        return configured, []
    for mode in RECOMPUTE_MODES:
        fit = worst_rank(ranks, mode)
        if fit.total(mode) <= capacity:
            return None, [
                Finding(
                    "error",
                    _k(where, "train.recompute"),
                    f"is {configured}, and the stage does not fit without more recomputation: pipeline rank "
                    f"{worst.pp_rank} needs {worst.total(configured) / GIB:.1f} GiB of {capacity / GIB:.1f} "
                    f"(--reserve-gib keeps the margin); set train.recompute={mode} ({fit.total(mode) / GIB:.1f} GiB)",
                )
            ]
    worst = worst_rank(ranks, "full")
    return None, [
        Finding(
            "error",
            _k(where, "parallel"),
            f"does not fit even with full recomputation: pipeline rank {worst.pp_rank} needs "
            f"{worst.total('full') / GIB:.1f} GiB of {capacity / GIB:.1f} (states {worst.states / GIB:.1f}); "
            "raise tp or pp, enable parallel.distributed_optimizer, or lower train.micro_batch_size",
        )
    ]


def tp_span(parallel: ParallelConfig, gpus_per_node: int, where: str) -> list[Finding]:
    if parallel.tp <= gpus_per_node:
        return []
    return [
        Finding(
            "warning",
            _k(where, "parallel.tp"),
            f"tp={parallel.tp} spans nodes of {gpus_per_node} GPUs: tensor-parallel all-reduces cross "
            f"the network every layer; keep tp <= {gpus_per_node} and use pp instead",
        )
    ]


def timeout(parallel: ParallelConfig, ckpt: CheckpointTime, where: str) -> list[Finding]:
    """A warning when ``parallel.timeout_minutes`` is below the recommendation for the stage's
    checkpoint (``training.plan.ckpt``): a save or load + verify would outlast the timeout and end
    the job."""
    if parallel.timeout_minutes >= ckpt.timeout_minutes:
        return []
    key = _k(where, "parallel.timeout_minutes")
    return [
        Finding(
            "warning",
            key,
            f"{parallel.timeout_minutes:g} min is below the {ckpt.timeout_minutes} min recommended for this "
            f"stage's {ckpt.bytes / 1e12:.2g} TB checkpoint (save {ckpt.save_s / 60:.1f} min, load + verify "
            f"{ckpt.load_s / 60:.1f} min); set {override_key(key)}={ckpt.timeout_minutes}",
        )
    ]
