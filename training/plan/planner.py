"""Plan a run: per stage, size, memory per GPU, fit, time; and the from-scratch alternative.

``plan_run(run, options)`` is the one entry point; it only computes (no I/O but reading measured
metrics files) and returns a ``RunPlan`` that ``training.plan.report`` prints. A run without a
``stages:`` list is planned as one stage of ``train.steps`` steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from training.config import ModelConfig, ParallelConfig, RunConfig, TrainConfig
from training.config_base import ConfigError
from training.orchestration.stage_plans import StagedRun
from training.plan import checks
from training.plan.checks import Finding
from training.plan.ckpt import DEFAULT_READ_GBPS, DEFAULT_WRITE_GBPS, CheckpointTime, checkpoint_time, precision_of
from training.plan.hardware import GIB, GpuSpec
from training.plan.memory import RankMemory, Recompute, rank_memory
from training.plan.params import RankParams, rank_params, unique_params
from training.plan.throughput import (
    Throughput,
    hardware_flops_per_token,
    measured_mfu,
    model_flops_per_token,
    tokens_per_day,
)

#: MFU assumed when neither --mfu, --tflops nor --measured gives one
DEFAULT_MFU = 0.5


@dataclass(frozen=True)
class PlanOptions:
    """What the planner assumes beyond the config.

    ``tflops``/``mfu``: one value for every stage or one per stage (model FLOPs, see
    ``training.plan.throughput``); ``measured``: a ``metrics.jsonl``, a run or stage directory, or
    a staged run's output directory (``stage<i>-<name>/metrics.jsonl`` per stage), taking precedence
    where it has a figure. ``gpus``: None plans each stage on its own ``tp x pp x dp``.
    ``zero``: None means the run's own: ``deepspeed.zero_stage`` under ``engine: deepspeed``, else 1
    with ``parallel.distributed_optimizer`` and 0 without. ``write_gbps`` / ``read_gbps``: each
    node's bandwidth to the checkpoint filesystem, GB/s (``training.plan.ckpt``).
    """

    gpu: GpuSpec
    gpus: Optional[int] = None
    tflops: tuple[float, ...] = ()
    mfu: tuple[float, ...] = ()
    measured: Optional[Path] = None
    zero: Optional[int] = None
    reserve_gib: float = 4.0
    gpus_per_node: int = 8
    compare_days: tuple[float, ...] = ()
    write_gbps: float = DEFAULT_WRITE_GBPS
    read_gbps: float = DEFAULT_READ_GBPS


@dataclass(frozen=True)
class MuPPlan:
    """μP multipliers of the model a stage trains (a grown stage's: the grown config, derived fields
    included; docs/mup.md)."""

    base_width: int
    #: m = hidden_size / base_width
    width_multiplier: float
    #: train.lr: embeddings, readout, norms and biases
    lr: float
    #: lr / m: QKV, attention output, FC1, FC2
    hidden_lr: float
    #: output_multiplier / m: what the logits are multiplied by
    readout_multiplier: float
    #: attention_multiplier / d_head: what q.k is multiplied by
    attention_scale: float
    #: init_std / sqrt(m): the hidden matrices' init std (fresh weights; growth keeps trained ones)
    hidden_init_std: float

    @classmethod
    def of(cls, model: ModelConfig, train: TrainConfig) -> Optional[MuPPlan]:
        if model.mup is None:
            return None
        m = model.width_multiplier
        return cls(
            base_width=model.mup.base_width,
            width_multiplier=m,
            lr=train.lr,
            hidden_lr=train.lr / m,
            readout_multiplier=model.readout_multiplier,
            attention_scale=model.attention_scale,
            hidden_init_std=model.hidden_init_std,
        )


@dataclass
class StagePlan:
    index: int
    name: str
    key: str
    model: ModelConfig
    parallel: ParallelConfig
    train: TrainConfig
    dp: int
    tokens: int
    params: int
    ranks: list[RankParams]
    flops_per_token: float
    hardware_flops_per_token: float
    zero: int
    precision: Literal["bf16", "fp32"]
    micro_batches: int
    memory: list[RankMemory]
    fits: Optional[Recompute]
    throughput: Throughput
    bubble: float
    flops_imbalance: float
    #: the stage's checkpoint: size, save and load + verify times, recommended timeout and signal lead
    checkpoint: CheckpointTime
    reference_days: Optional[float] = None
    findings: list[Finding] = field(default_factory=list)
    #: μP multipliers (None: the standard parametrisation)
    mup: Optional[MuPPlan] = None
    #: the LR the stage starts at, by the trainer's scheduler (``training.engine.optim.stage_start_lr``)
    start_lr: Optional[float] = None

    @property
    def gpus(self) -> int:
        return self.parallel.tp * self.parallel.pp * self.dp

    @property
    def tokens_per_day(self) -> float:
        return tokens_per_day(self.flops_per_token, self.gpus, self.throughput.tflops)

    @property
    def days(self) -> float:
        return self.tokens / self.tokens_per_day

    @property
    def gpu_hours(self) -> float:
        return self.days * 24 * self.gpus

    @property
    def layout(self) -> str:
        p = self.parallel
        text = f"tp{p.tp} pp{p.pp} dp{self.dp}"
        if p.virtual_pp:
            text += f" vpp{p.virtual_pp}"
        if p.sequence_parallel:
            text += " sp"
        return text


@dataclass
class RunPlan:
    source: str
    gpu: GpuSpec
    capacity_bytes: float
    options: PlanOptions
    stages: list[StagePlan]
    scratch: StagePlan

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.stages for f in s.findings]

    @property
    def days(self) -> float:
        return sum(s.days for s in self.stages)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def savings(self) -> float:
        """Fraction of the from-scratch time the staged run saves."""
        return 1 - self.days / self.scratch.days


def _per_stage(values: tuple[float, ...], n: int, flag: str) -> list[Optional[float]]:
    if not values:
        return [None] * n
    if len(values) == 1:
        return [values[0]] * n
    if len(values) != n:
        raise ConfigError(flag, f"give one value or one per stage ({n}), got {len(values)}")
    return list(values)


def _measured_path(measured: Path, stage_dir: Optional[Path], staged: bool) -> Optional[Path]:
    if measured.is_file():
        return measured
    if staged and stage_dir is not None and (measured / stage_dir.name / "metrics.jsonl").is_file():
        return measured / stage_dir.name / "metrics.jsonl"
    if (measured / "metrics.jsonl").is_file():
        return measured / "metrics.jsonl"
    return None


def _throughput(
    opts: PlanOptions, tflops: Optional[float], mfu: Optional[float], measured: Optional[Path]
) -> Throughput:
    peak = opts.gpu.peak_tflops
    if measured is not None:
        value = measured_mfu(measured)
        return Throughput(value * peak, peak, f"measured {measured}")
    if tflops is not None:
        return Throughput(tflops, peak, "given")
    if mfu is not None:
        return Throughput(mfu * peak, peak, "given")
    return Throughput(DEFAULT_MFU * peak, peak, "default")


def run_zero_stage(cfg: RunConfig) -> int:
    """The ZeRO stage a run trains with: DeepSpeed's, or 1 for megatron's distributed optimizer."""
    if cfg.engine == "deepspeed":
        return cfg.deepspeed.zero_stage
    return 1 if cfg.parallel.distributed_optimizer else 0


def _plan_stage(
    index: int,
    name: str,
    key: str,
    cfg: RunConfig,
    tokens: int,
    opts: PlanOptions,
    throughput: Throughput,
    reference_days: Optional[float],
    capacity: float,
    trained_model: Optional[ModelConfig] = None,
) -> StagePlan:
    """``trained_model``: the model the stage trains when it differs from ``cfg.model`` in derived
    fields (a grown stage, ``training.orchestration.stage_plans.Stage.config``); only its μP multipliers are read."""
    model, parallel, train = cfg.model, cfg.parallel, cfg.train
    dp, findings = checks.data_parallel(parallel, opts.gpus, key)
    micro_batches, found = checks.batch(train, parallel, dp, key)
    findings += found
    ranks = rank_params(model, parallel)
    zero = opts.zero if opts.zero is not None else run_zero_stage(cfg)
    precision = precision_of(train)
    memory = rank_memory(
        model,
        parallel,
        ranks,
        dp=dp,
        micro_batch=train.micro_batch_size,
        micro_batches=micro_batches,
        zero=zero,
        precision=precision,
    )
    fits, found = checks.memory(memory, capacity, key, train.recompute)
    findings += found
    imbalance, found = checks.pipeline_balance(model, parallel, ranks, key)
    findings += found
    findings += checks.tp_span(parallel, opts.gpus_per_node, key)
    ckpt = checkpoint_time(
        model,
        parallel,
        dp,
        precision=precision,
        engine=cfg.engine,
        gpus_per_node=opts.gpus_per_node,
        write_gbps=opts.write_gbps,
        read_gbps=opts.read_gbps,
    )
    findings += checks.timeout(parallel, ckpt, key)
    bubble = (parallel.pp - 1) / (micro_batches * (parallel.virtual_pp or 1))
    return StagePlan(
        index=index,
        name=name,
        key=key,
        model=model,
        parallel=parallel,
        train=train,
        dp=dp,
        tokens=tokens,
        params=unique_params(model, parallel),
        ranks=ranks,
        flops_per_token=model_flops_per_token(model),
        hardware_flops_per_token=hardware_flops_per_token(model),
        zero=zero,
        precision=precision,
        micro_batches=micro_batches,
        memory=memory,
        fits=fits,
        throughput=throughput,
        bubble=bubble,
        flops_imbalance=imbalance,
        checkpoint=ckpt,
        reference_days=reference_days,
        findings=findings,
        mup=MuPPlan.of(trained_model or model, train),
    )


def plan_run(run: StagedRun, opts: PlanOptions, source: str = "") -> RunPlan:
    """Plan every stage of ``run`` (a run without stages is one stage) and the from-scratch training
    of the final shape on the summed token budget. Raises ``ConfigError`` when a stage cannot be
    sized at all; everything else becomes a ``Finding`` of the stage."""
    # optional heavy dependency: megatron-core (the LR at each stage's start is the trainer's scheduler's)
    from training.engine.optim import stage_start_lr

    capacity = opts.gpu.memory_bytes - opts.reserve_gib * GIB
    # sized by the shapes as written; a grown stage's derived fields (its μP multipliers) come from the
    # model it trains
    configs = [dataclasses.replace(s.config, model=s.declared_model) for s in run.stages]
    n = len(configs)
    tflops = _per_stage(opts.tflops, n, "--tflops")
    mfus = _per_stage(opts.mfu, n, "--mfu")
    refs = _per_stage(opts.compare_days, n, "--compare-days")
    stages = []
    for i, (stage, cfg) in enumerate(zip(run.stages, configs)):
        measured = None
        if opts.measured is not None:
            measured = _measured_path(opts.measured, stage.dir, run.staged)
            if measured is None and tflops[i] is None and mfus[i] is None:
                raise ConfigError(
                    "--measured",
                    f"no metrics.jsonl for stage {stage.name} under {opts.measured} "
                    f"(looked for {stage.dir.name}/metrics.jsonl and "
                    "metrics.jsonl); pass --mfu or --tflops for the stages without one",
                )
        throughput = _throughput(opts, tflops[i], mfus[i], measured)
        planned = _plan_stage(
            i, stage.name, stage.key, cfg, stage.tokens, opts, throughput, refs[i], capacity, stage.config.model
        )
        planned.start_lr = stage_start_lr(stage.config.train, first=i == 0)
        stages.append(planned)
    final = stages[-1]
    scratch = _plan_stage(  # from scratch: the final shape as its section says (no grown-in derived fields)
        n,
        f"{final.name} from scratch",
        final.key,
        configs[-1],
        run.stages[-1].run_tokens,
        opts,
        final.throughput,
        None,
        capacity,
    )
    scratch.findings = []  # the final stage's, already reported
    return RunPlan(source=source, gpu=opts.gpu, capacity_bytes=capacity, options=opts, stages=stages, scratch=scratch)
