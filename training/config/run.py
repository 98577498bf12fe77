"""The sections of a run besides model, layout and stages, and ``RunConfig`` with the rules between them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from training.config.data import DataConfig
from training.config.layout import ParallelConfig, check_deepspeed_layout
from training.config.model import ModelConfig
from training.config.stages import StageConfig
from training.config.telemetry import LoggingConfig
from training.config_base import ConfigError, join_key

#: why growth refuses TE/Apex FusedAdam (``train.optimizer_impl: fused``)
FUSED_ADAM_GROWTH = (
    "growth carries Adam's per-parameter step and moments of torch's AdamW; Transformer Engine / Apex "
    "FusedAdam keep the step in their own bookkeeping, which growth cannot carry (the grown model would "
    "silently restart bias correction); set train.optimizer_impl=torch for growth runs"
)


@dataclass
class TrainConfig:
    """Optimisation: AdamW, warmup + cosine to a floor, clipping, batch sizes, precision."""

    steps: int = 20
    global_batch_size: int = 8
    micro_batch_size: int = 2
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 2
    lr_decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    #: steps over which the LR decays to min_lr; null means train.steps
    lr_decay_steps: Optional[int] = None
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    seed: int = 1234
    #: auto = bf16 on CUDA, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    eval_interval: int = 10
    eval_batches: int = 2
    log_interval: int = 1
    #: what to do when the loss is NaN/inf: stop with an error, or skip the step
    on_nan: Literal["raise", "skip"] = "raise"
    #: activation recomputation (megatron-core): none; selective = core attention only
    #: (Korthikanti et al. 2022); full = every layer's activations
    recompute: Literal["none", "selective", "full"] = "none"
    #: core attention: fused = torch's scaled_dot_product_attention (flash / memory-efficient
    #: kernels on GPU, the fused CPU kernel); unfused = megatron's DotProductAttention (baddbmm +
    #: softmax + bmm). Same math (tested equal in fp32); growth masks and xPos work with both
    attention: Literal["fused", "unfused"] = "fused"
    #: the Adam implementation of the megatron engine. torch: torch.optim.AdamW, also where
    #: Transformer Engine or Apex is installed (megatron would silently pick their FusedAdam);
    #: growth carries its per-parameter step. fused: TE's / Apex's FusedAdam (must be installed),
    #: whose step bookkeeping growth cannot carry: refused for growth runs and moment-carrying
    #: --init-from
    optimizer_impl: Literal["torch", "fused"] = "torch"
    #: the LR schedule is entered at this step (its value at step n is the schedule's at offset + n);
    #: set per stage by a staged run's ``lr_schedule: {kind: global}`` (docs/growth.md)
    schedule_offset_steps: int = 0
    #: after growth: the LR rises linearly from 0 to the schedule's value over this many steps
    rewarmup_steps: int = 0

    def validate(self, path: str) -> None:
        for name in ("schedule_offset_steps", "rewarmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(join_key(path, name), "must be >= 0")
        for name in ("steps", "global_batch_size", "micro_batch_size", "log_interval", "eval_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(join_key(path, name), "must be a positive integer")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(
                join_key(path, "global_batch_size"),
                f"{self.global_batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}",
            )
        if self.lr <= 0 or not 0 <= self.min_lr <= self.lr:
            raise ConfigError(
                join_key(path, "min_lr"), f"need 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})"
            )
        if self.warmup_steps < 0:
            raise ConfigError(join_key(path, "warmup_steps"), "must be >= 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ConfigError(join_key(path, "adam_beta1"), "Adam betas must be in [0, 1)")
        if self.clip_grad < 0:
            raise ConfigError(join_key(path, "clip_grad"), "must be >= 0 (0 disables clipping)")

    def micro_batches(self, dp: int) -> int:
        per_rank = self.global_batch_size // dp if self.global_batch_size % dp == 0 else None
        if per_rank is None or per_rank % self.micro_batch_size:
            raise ConfigError(
                "train.global_batch_size",
                f"{self.global_batch_size} is not divisible by micro_batch_size x dp = "
                f"{self.micro_batch_size} x {dp}; choose a multiple of {self.micro_batch_size * dp}",
            )
        return per_rank // self.micro_batch_size


@dataclass
class CheckpointConfig:
    #: where checkpoints go; null means <output_dir>/checkpoints
    dir: Optional[str] = None
    #: save every N steps (0: only at the end)
    save_interval: int = 0
    #: how many step checkpoints to keep (older ones are deleted after a successful save)
    keep_last: int = 2
    #: check the hash of every file when resuming (sizes are always checked); false skips the
    #: read of the whole checkpoint on very large runs (`flm ckpt verify` checks one offline)
    verify_hash: bool = True

    def validate(self, path: str) -> None:
        if self.save_interval < 0:
            raise ConfigError(join_key(path, "save_interval"), "must be >= 0")
        if self.keep_last < 1:
            raise ConfigError(join_key(path, "keep_last"), "must be >= 1")


@dataclass
class DeepSpeedConfig:
    """The ``deepspeed:`` section, read when ``engine: deepspeed`` (see ``training/engine/ds_trainer.py``).

    The DeepSpeed engine is data-parallel only: ZeRO partitions optimizer state (stage 1), also
    gradients (2), also parameters (3) over the DP ranks. The rest of the DeepSpeed config (batch
    sizes, clipping, precision, AdamW) is derived from ``train:`` so both engines train alike.
    """

    #: ZeRO stage: 1 = optimizer states partitioned, 2 = + gradients, 3 = + parameters
    zero_stage: Literal[1, 2, 3] = 1
    #: keep the optimizer states and the Adam update on the CPU (ZeRO-Offload, torch's AdamW;
    #: no DeepSpeed op is compiled). On CPU-only machines it changes nothing but the code path.
    offload_optimizer: bool = False

    def validate(self, path: str) -> None:
        if type(self.zero_stage) is not int:  # Literal accepts True == 1 and 2.0 == 2
            raise ConfigError(join_key(path, "zero_stage"), f"got {self.zero_stage!r}; allowed values: 1, 2, 3")


@dataclass
class DivergenceConfig:
    """The ``divergence:`` section: loss spikes and runs of skipped steps (see docs/faults.md).

    A step is a *spike* when its (finite) loss exceeds ``mean + spike_sigmas * std`` of the last
    ``window`` good steps and also ``spike_ratio * mean``; its update is skipped like a non-finite
    loss under ``train.on_nan: skip``. Each one is a warning and a ``spike``/``skipped`` field of
    the metrics record. After ``max_consecutive`` skipped or spiking steps in a row, ``action``:
    ``stop`` ends the run with a one-line error (exit status 1); ``rollback`` reloads the newest
    checkpoint, skips the data up to and including the offending batches, multiplies the LR by
    ``rollback_lr_factor`` and continues (at most ``max_rollbacks`` times, then stop).
    """

    #: spike threshold in standard deviations of the recent losses; 0 turns spike detection off
    spike_sigmas: float = 0.0
    #: a spike must also exceed this multiple of the recent mean loss
    spike_ratio: float = 1.5
    #: how many recent good steps the statistics use (spikes are looked for once it is full)
    window: int = 20
    #: skipped (non-finite or spiking) steps in a row tolerated before ``action``
    max_consecutive: int = 5
    action: Literal["stop", "rollback"] = "stop"
    #: rollback: the LR (peak and minimum of the schedule) is multiplied by this after each rollback
    rollback_lr_factor: float = 0.5
    #: rollback: how many rollbacks a run may do before it stops
    max_rollbacks: int = 3

    def validate(self, path: str) -> None:
        if self.spike_sigmas < 0:
            raise ConfigError(join_key(path, "spike_sigmas"), "must be >= 0 (0: spike detection off)")
        if self.spike_ratio < 1:
            raise ConfigError(join_key(path, "spike_ratio"), "must be >= 1")
        if self.window < 2:
            raise ConfigError(join_key(path, "window"), "must be >= 2")
        if self.max_consecutive < 1:
            raise ConfigError(join_key(path, "max_consecutive"), "must be >= 1")
        if not 0 < self.rollback_lr_factor <= 1:
            raise ConfigError(join_key(path, "rollback_lr_factor"), "must be in (0, 1]")
        if self.max_rollbacks < 0:
            raise ConfigError(join_key(path, "max_rollbacks"), "must be >= 0")


#: where a staged run records its ``iq_eval`` section for the evaluators (``<output_dir>/iq_eval.json``)
IQ_EVAL_RECORD = "iq_eval.json"


@dataclass
class IQEvalConfig:
    """The ``iq_eval:`` section: what the IQ benchmark evaluates on a growth run's checkpoints. The
    training job never evaluates: it records this section in ``<output_dir>/iq_eval.json`` and
    ``flm eval <output_dir> [--watch]`` (``eval_iq.watch``) scores the checkpoints, each in a process
    of its own (results in ``<stage dir>/iq/step_N/``, scores in ``<stage dir>/eval.jsonl``;
    ``flm dryrun`` shows each stage's final scores). Needs a tokenizer with the checkpoint (not
    ``data.kind: mock``)."""

    #: subtasks, categories or groups, as ``flm iq --subtasks`` takes them
    tasks: list[str] = field(default_factory=lambda: ["rules", "patterns", "anti_interference"])
    #: evaluate the first N instances of each subtask (null: all)
    limit: Optional[int] = 20
    #: SuperGLUE/CLUE directory for symbolic mapping (null: $FLM_IQ_DATA_DIR); missing data is skipped
    data_dir: Optional[str] = None

    def check(self, path: str) -> None:
        """Called by ``RunConfig.validate`` (a ``validate`` method's errors would be reported as
        "expected IQEvalConfig or null" by the conversion of an optional section). The task names are
        the benchmark's, a layer above the configs: ``eval_iq.stage_eval.check_iq_eval`` checks them
        when a run is shown or started."""
        if not self.tasks:
            raise ConfigError(join_key(path, "tasks"), "give at least one subtask, category or group")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(join_key(path, "limit"), f"must be >= 1 or null (all instances), got {self.limit}")


@dataclass
class LRScheduleConfig:
    """The ``lr_schedule:`` section of a staged run: how the stages' learning rates relate.

    - ``per_stage``: every stage has its own warmup and decay over its own steps (the stage's
      ``lr_policy`` decides its warmup);
    - ``global``: one schedule over the whole run's tokens (warmup over ``warmup_tokens``, decay to
      ``min_lr`` at the run's last token); each stage enters it where the previous stage stopped, at
      its own peak (``stages[i].train.lr``; FLM-101B: 4e-4, 3.4e-4, 2e-4), after an optional linear
      re-warmup of ``rewarmup_steps`` steps;
    - ``equivalent_step``: as ``global``, but a grown stage enters the schedule at the tokens a
      from-scratch run of the grown shape would need to reach the current loss (MSG), instead of
      where the previous stage stopped: ``stages[i].growth.equivalent_tokens`` when given, else
      estimated from the previous stage's validation curve (``training.orchestration.equivalent_step``) with
      ``size_exponent`` as the exponent of the loss in model size.

    ``global`` is the default: of the three it keeps the loss after growth lowest (docs/growth.md,
    "Where the post-growth jump comes from").
    """

    kind: Literal["per_stage", "global", "equivalent_step"] = "global"
    #: what the run-level schedule counts (``global``): ``tokens``, or ``flops`` -- each stage's tokens
    #: times its model's FLOPs per token (``training.model_size.flops_per_token``), so a stage enters
    #: the schedule at its share of the run's compute and a cheap small stage does not use up the
    #: decay (docs/benchmarks.md, "Growth against every baseline")
    progress: Literal["tokens", "flops"] = "tokens"
    #: warmup of the run-level schedule; null: the first stage's ``train.warmup_steps`` in its tokens
    warmup_tokens: Optional[int] = None
    rewarmup_steps: int = 0
    #: α_N of L(N, D) = (N_c/N)^α_N + (D_c/D)^β (Kaplan et al. 2020: 0.076), for the estimate
    size_exponent: float = 0.076

    def validate(self, path: str) -> None:
        if not 0 < self.size_exponent < 1:
            raise ConfigError(join_key(path, "size_exponent"), f"must be in (0, 1), got {self.size_exponent}")
        for name in ("warmup_tokens", "rewarmup_steps"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(join_key(path, name), "must be >= 0")


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    #: the training engine: megatron-core (TP/PP/DP, distributed optimizer) or DeepSpeed ZeRO
    #: (data parallelism only; ZeRO stage and offload in the ``deepspeed:`` section)
    engine: Literal["megatron", "deepspeed"] = "megatron"
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    #: a growth run: stages trained one after the other, each grown from the previous one; when
    #: empty, the run is the single stage described by model/parallel/train
    stages: list[StageConfig] = field(default_factory=list)
    #: the IQ benchmark at the end of every stage (null: none)
    iq_eval: Optional[IQEvalConfig] = None
    #: loss spikes and skipped-step limits (docs/faults.md)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    #: how the stages' learning rates relate (staged runs; docs/growth.md)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)

    @property
    def checkpoint_root(self) -> Path:
        """Where this run's ``step_N`` checkpoints go: ``checkpoint.dir``, else ``<output_dir>/checkpoints``
        (a staged run's stages each get their own, ``training.orchestration.stage_plans``)."""
        return Path(self.checkpoint.dir) if self.checkpoint.dir else Path(self.output_dir) / "checkpoints"

    def timeout_minutes(self) -> float:
        """The process-group timeout of a job running this run: ``parallel.timeout_minutes``, or the
        largest of the stages' (a staged job initialises its process group once for all stages)."""
        return max((s.parallel.timeout_minutes for s in self.stages), default=self.parallel.timeout_minutes)

    def validate(self, path: str) -> None:
        if self.iq_eval is not None:
            if not self.stages:
                raise ConfigError(
                    join_key(path, "iq_eval"),
                    "runs at the end of each stage of a staged run (stages:); "
                    "for a single run use `flm iq --model flm --checkpoint CKPT` or set iq_eval=null",
                )
            self.iq_eval.check(join_key(path, "iq_eval"))
        for i, stage in enumerate(self.stages):
            where = join_key(path, f"stages[{i}]")
            if i == 0 and stage.growth is not None:
                raise ConfigError(
                    join_key(where, "growth"), "the first stage is trained from scratch; remove its growth section"
                )
            if i > 0 and stage.growth is None:
                raise ConfigError(join_key(where, "growth"), "every stage after the first needs a growth section")
            if stage.data and self.data.kind == "mock":
                raise ConfigError(
                    join_key(where, "data"),
                    "a stage's own blend needs the run's data to be datasets (data.kind default or prepared), "
                    "not mock; set data.kind or remove the stage's data section",
                )
            if (
                stage.growth is not None
                and stage.growth.lr_policy != "inherit"
                and self.lr_schedule.kind != "per_stage"
            ):
                raise ConfigError(
                    join_key(where, "growth.lr_policy"),
                    f"applies to lr_schedule.kind=per_stage; under {self.lr_schedule.kind} the stage enters the "
                    "run-level schedule (use lr_schedule.rewarmup_steps for a re-warmup), so remove it or set "
                    "lr_schedule.kind=per_stage",
                )
        if self.logging.profile is not None and not self.stages:  # a staged run's stages check their own steps
            self.logging.profile.check_steps(join_key(path, "logging.profile"), self.train.steps)
        m, p = self.model, self.parallel
        if self.engine == "deepspeed" and self.train.optimizer_impl != "torch":
            raise ConfigError(
                join_key(path, "train.optimizer_impl"),
                "engine: deepspeed trains with torch's AdamW; set train.optimizer_impl=torch",
            )
        if self.engine == "deepspeed":
            check_deepspeed_layout(p, join_key(path, "parallel"))
        for name, value in (
            ("num_attention_heads", m.num_attention_heads),
            ("num_query_groups", m.query_groups),
            ("ffn_hidden_size", m.ffn_hidden_size),
        ):
            if value % p.tp:
                raise ConfigError(
                    join_key(path, f"model.{name}"),
                    f"{value} is not divisible by parallel.tp={p.tp}; allowed tp values: "
                    f"{[d for d in range(1, value + 1) if value % d == 0]}",
                )
        layers_per_rank = p.pp * (p.virtual_pp or 1)
        if m.num_layers % layers_per_rank:
            raise ConfigError(
                join_key(path, "model.num_layers"),
                f"{m.num_layers} layers cannot be split evenly over pp={p.pp}"
                + (f" x virtual_pp={p.virtual_pp}" if p.virtual_pp else ""),
            )
        if p.sequence_parallel and m.seq_length % p.tp:
            raise ConfigError(
                join_key(path, "model.seq_length"), f"must be divisible by tp={p.tp} with sequence_parallel"
            )
        if p.virtual_pp and self.train.global_batch_size // self.train.micro_batch_size % p.pp:
            raise ConfigError(
                join_key(path, "train.global_batch_size"),
                "the interleaved schedule needs the number of micro-batches to be a multiple of pp",
            )
