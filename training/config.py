"""The run configuration: typed sections, their defaults, and the rules between fields.

A run YAML has the sections below. A section may instead be a string naming another YAML file
(``model: models/tiny.yaml``), resolved relative to the run file and then to ``configs/``; dotted
overrides (``train.lr=3e-4 parallel.tp=2``) apply after that. ``load_run_config`` returns a
validated ``RunConfig``; every error is a ``ConfigError`` naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from training.config_base import ConfigError, apply_overrides, from_dict, join_key, read_yaml, to_dict
from training.data.config import DataConfig

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"

#: ``ModelConfig`` fields that do not change the function a checkpoint's weights compute: how
#: long the training sequences are (positions enter only through differences), how fresh weights
#: are drawn, dropout. Every other field defines the function (``function_fields``).
NON_FUNCTION_FIELDS = ("seq_length", "init_std", "hidden_dropout", "attention_dropout")


@dataclass
class MuPConfig:
    """μP, the maximal-update parametrisation (Yang et al. 2022) as μScaling and FLM-101B apply it
    to a pre-LN decoder: hyperparameters tuned at ``base_width`` transfer to any ``hidden_size``.

    With the width multiplier ``m = hidden_size / base_width``: hidden matrices (QKV, attention
    output, FC1, FC2) are drawn with std ``init_std / sqrt(m)`` (megatron's extra ``1 / sqrt(2 *
    num_layers)`` on the attention output and FC2 kept) and trained with Adam learning rate
    ``lr / m`` and weight decay ``weight_decay * m`` (so the decay per step, ``lr * weight_decay``,
    does not depend on the width); attention logits are ``attention_multiplier * q.k / d_head``
    (not ``/ sqrt(d_head)``); the logits are multiplied by ``output_multiplier / m``. Embeddings,
    the readout (the untied output layer, drawn with ``init_std`` like the embedding), norms and
    biases keep ``init_std``, ``lr`` and ``weight_decay``. See docs/mup.md. A model without this
    section uses the standard parametrisation.
    """

    base_width: int = 256
    attention_multiplier: float = 1.0

    def validate(self, path: str) -> None:
        if self.base_width <= 0:
            raise ConfigError(join_key(path, "base_width"), "must be a positive integer (the proxy's hidden_size)")
        if self.attention_multiplier <= 0:
            raise ConfigError(join_key(path, "attention_multiplier"), "must be > 0")


@dataclass
class ModelConfig:
    """Shape and block variant of the decoder LM."""

    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 256
    num_attention_heads: int = 4
    #: number of key/value heads (GQA); null means one per attention head (MHA)
    num_query_groups: Optional[int] = None
    #: head dimension; null means hidden_size / num_attention_heads
    kv_channels: Optional[int] = None
    #: size of the tokenizer's vocabulary (the embedding is padded, see padded_vocab_size)
    vocab_size: int = 512
    #: embedding rows are padded to a multiple of this times the TP size
    make_vocab_size_divisible_by: int = 64
    seq_length: int = 64
    normalization: Literal["LayerNorm", "RMSNorm"] = "LayerNorm"
    activation: Literal["gelu", "swiglu"] = "gelu"
    position_embedding: Literal["rope", "xpos"] = "rope"
    rotary_base: int = 10000
    xpos_scale_base: float = 512.0
    tie_embeddings: bool = True
    #: biases in the linear layers (GPT-3/FLM style); Llama style has none
    bias: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02
    #: muP-style multipliers: embedding output x input_multiplier, logits x output_multiplier
    input_multiplier: float = 1.0
    output_multiplier: float = 1.0
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    #: μP settings (``MuPConfig``); null means the standard parametrisation
    mup: Optional[MuPConfig] = None

    @classmethod
    def function_fields(cls) -> tuple[str, ...]:
        """The fields that define the function of the weights (all but ``NON_FUNCTION_FIELDS``):
        a checkpoint loads only into a config that agrees with it on every one of them."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in NON_FUNCTION_FIELDS)

    def function_values(self) -> dict[str, Any]:
        """``function_fields`` -> value, with the two fields that have a null shorthand resolved
        (``num_query_groups`` null = heads, ``kv_channels`` null = hidden / heads), so equal models
        compare equal however they were written."""
        values = {name: getattr(self, name) for name in self.function_fields()}
        values.update(num_query_groups=self.query_groups, kv_channels=self.head_dim)
        return values

    @property
    def width_multiplier(self) -> float:
        """μP's ``m = hidden_size / mup.base_width``; 1 under the standard parametrisation."""
        return 1.0 if self.mup is None else self.hidden_size / self.mup.base_width

    @property
    def readout_multiplier(self) -> float:
        """What the logits are multiplied by: ``output_multiplier``, divided by ``m`` under μP."""
        return self.output_multiplier if self.mup is None else self.output_multiplier / self.width_multiplier

    @property
    def attention_scale(self) -> float:
        """What ``q.k`` is multiplied by: ``1 / sqrt(head_dim)``, or ``attention_multiplier / head_dim``
        under μP."""
        if self.mup is None:
            return 1.0 / math.sqrt(self.head_dim)
        return self.mup.attention_multiplier / self.head_dim

    @property
    def hidden_init_std(self) -> float:
        """The std hidden matrices are drawn with: ``init_std``, divided by ``sqrt(m)`` under μP."""
        return self.init_std / math.sqrt(self.width_multiplier)

    @property
    def query_groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def padded_vocab_size(self, tp: int) -> int:
        multiple = self.make_vocab_size_divisible_by * tp
        return int(math.ceil(self.vocab_size / multiple) * multiple)

    def validate(self, path: str) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "vocab_size",
            "seq_length",
            "make_vocab_size_divisible_by",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(join_key(path, name), "must be a positive integer")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                join_key(path, "num_attention_heads"),
                f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads; "
                "choose a divisor of hidden_size or set kv_channels",
            )
        if self.num_attention_heads % self.query_groups:
            raise ConfigError(
                join_key(path, "num_query_groups"),
                f"{self.num_attention_heads} heads are not divisible into {self.query_groups} groups",
            )
        if self.head_dim % 2:
            raise ConfigError(
                join_key(path, "kv_channels"), f"head dim {self.head_dim} must be even for rotary embeddings"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(join_key(path, name), "must be in [0, 1)")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise ConfigError(join_key(path, "norm_eps" if self.norm_eps <= 0 else "init_std"), "must be > 0")


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

    def validate(self, path: str) -> None:
        for name in ("tp", "pp"):
            if getattr(self, name) < 1:
                raise ConfigError(join_key(path, name), "must be >= 1")
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
class LoggingConfig:
    tensorboard: bool = True
    progress_bar: bool = True
    #: peak TFLOP/s of one device for MFU; null = known GPUs are detected, CPUs report no MFU
    peak_tflops: Optional[float] = None


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


@dataclass
class StageGrowthConfig:
    """How the previous stage's final checkpoint grows into this stage (see docs/growth.md).

    Shapes come from the two stages' models; the rest maps onto a ``growth.GrowthPlan``.
    """

    #: operator per dimension (hidden, ffn, heads, depth): none|msg|zero|clone (depth: none|msg|zero|stack);
    #: a dimension that changes and is not listed gets ``default_operator``
    operators: dict[str, str] = field(default_factory=dict)
    default_operator: Literal["msg", "zero", "clone"] = "msg"
    depth_placement: Literal["stack", "interleave"] = "interleave"
    depth_init: Literal["copy", "fresh"] = "copy"
    #: steps over which MSG's masks go from 0 to 1; long enough for the new weights to adapt before
    #: they count in full (ramp 50 jumped +5.5% after growth, ramp 200 did not: docs/growth.md)
    ramp_steps: int = 200
    ramp_shape: Literal["linear", "cosine"] = "linear"
    init_std: Optional[float] = None
    clone_noise: float = 0.0
    seed: int = 0
    exact: bool = True
    #: with ``lr_schedule: {kind: per_stage}``, the LR at the start of the stage: inherit = this stage's
    #: start LR with its (short) warmup (FLM-101B);
    #: rewind = straight back to this stage's peak LR, no warmup (MSG); restart = full warmup again,
    #: as long as the first stage's (G_stack)
    lr_policy: Literal["inherit", "rewind", "restart"] = "inherit"
    #: with ``lr_schedule: {kind: equivalent_step}``: where (in tokens of the run-level schedule) this
    #: stage enters the schedule; null estimates it from the previous stage's curve
    equivalent_tokens: Optional[int] = None

    def validate(self, path: str) -> None:
        if self.equivalent_tokens is not None and self.equivalent_tokens < 0:
            raise ConfigError(join_key(path, "equivalent_tokens"), "must be >= 0")
        for dim in self.operators:
            if dim not in ("hidden", "ffn", "heads", "depth"):
                raise ConfigError(
                    join_key(path, f"operators.{dim}"), "unknown dimension; allowed: hidden, ffn, heads, depth"
                )
        if self.ramp_steps < 1:
            raise ConfigError(join_key(path, "ramp_steps"), "must be >= 1")


@dataclass
class StageConfig:
    """One stage of a growth run: a model shape trained for a token budget under a layout."""

    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    #: token budget of the stage (steps = ceil(tokens / (global_batch_size x seq_length)))
    tokens: int = 0
    #: overrides of the run's ``train`` section for this stage (lr, min_lr, warmup_steps, batch sizes, ...)
    train: dict[str, Any] = field(default_factory=dict)
    #: how the previous stage grows into this one (required for every stage but the first)
    growth: Optional[StageGrowthConfig] = None

    def validate(self, path: str) -> None:
        if self.tokens <= 0:
            raise ConfigError(join_key(path, "tokens"), f"the token budget must be > 0, got {self.tokens}")
        if "steps" in self.train:
            raise ConfigError(join_key(path, "train.steps"), "a stage's length is its token budget; set tokens instead")


@dataclass
class IQEvalConfig:
    """The ``iq_eval:`` section: the IQ benchmark on each stage's final checkpoint of a growth run
    (``eval_iq.stage_eval``; results in ``<stage dir>/iq/``, scores in ``stages.jsonl`` and the
    dry-run report). Needs a tokenizer with the checkpoint (not ``data.kind: mock``)."""

    #: subtasks, categories or groups, as ``flm iq --subtasks`` takes them
    tasks: list[str] = field(default_factory=lambda: ["rules", "patterns", "anti_interference"])
    #: evaluate the first N instances of each subtask (null: all)
    limit: Optional[int] = 20
    #: SuperGLUE/CLUE directory for symbolic mapping (null: $FLM_IQ_DATA_DIR); missing data is skipped
    data_dir: Optional[str] = None

    def check(self, path: str) -> None:
        """Called by ``RunConfig.validate`` (a ``validate`` method's errors would be reported as
        "expected IQEvalConfig or null" by the conversion of an optional section). The task names are
        the benchmark's, a layer above the configs: ``eval_iq.stage_eval.StageIQ.check`` checks them
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
      estimated from the previous stage's validation curve (``training.equivalent_step``) with
      ``size_exponent`` as the exponent of the loss in model size.

    ``global`` is the default: of the three it keeps the loss after growth lowest (docs/growth.md,
    "Where the post-growth jump comes from").
    """

    kind: Literal["per_stage", "global", "equivalent_step"] = "global"
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
            merged = stage_config(self, i, path)  # the merged single-stage config must be valid too
            if len(self.stages) > 1 and merged.train.optimizer_impl == "fused":
                raise ConfigError(join_key(path, "train.optimizer_impl"), FUSED_ADAM_GROWTH)
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


def _include(value: str, key: str, base: Path) -> dict[str, Any]:
    for candidate in (base / value, CONFIGS_DIR / value):
        if candidate.is_file():
            return read_yaml(candidate)
    raise ConfigError(key, f"included file {value!r} not found next to the run file or in {CONFIGS_DIR}")


def _resolve_includes(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Replace section values that are strings (file names) by the YAML they name."""
    out = dict(data)
    for key in ("model", "parallel", "train", "data", "checkpoint", "logging", "deepspeed"):
        if isinstance(out.get(key), str):
            out[key] = _include(out[key], key, base)
    if isinstance(out.get("stages"), list):
        stages = []
        for i, stage in enumerate(out["stages"]):
            if isinstance(stage, dict):
                stage = dict(stage)
                for key in ("model", "parallel"):
                    if isinstance(stage.get(key), str):
                        stage[key] = _include(stage[key], f"stages[{i}].{key}", base)
            stages.append(stage)
        out["stages"] = stages
    return out


def stage_steps(tokens: int, train: TrainConfig, model: ModelConfig) -> int:
    return max(1, math.ceil(tokens / (train.global_batch_size * model.seq_length)))


def stage_config(run: RunConfig, index: int, path: str = "", entry_tokens: Optional[int] = None) -> RunConfig:
    """The single-stage ``RunConfig`` of stage ``index``: its model and layout, the run's train
    section with the stage's overrides and LR policy, steps from its token budget, its own output
    directory ``<output_dir>/stage<index>-<name>``. ``entry_tokens``: under ``equivalent_step``
    without ``growth.equivalent_tokens``, the estimated entry (``training.equivalent_step``)."""

    stage = run.stages[index]
    where = join_key(path, f"stages[{index}]")
    train_data = dict(to_dict(run.train), **stage.train)
    train = from_dict(TrainConfig, train_data, join_key(where, "train"))
    train.steps = stage_steps(stage.tokens, train, stage.model)
    if run.lr_schedule.kind == "per_stage":
        if stage.growth is not None and stage.growth.lr_policy == "rewind":
            train.warmup_steps = 0
        elif stage.growth is not None and stage.growth.lr_policy == "restart":
            first = dict(to_dict(run.train), **run.stages[0].train)
            train.warmup_steps = int(first.get("warmup_steps", train.warmup_steps))
    else:
        _run_level_schedule(run, index, train, stage.model, where, entry_tokens)
    name = stage.name or f"stage{index}"
    single = dataclasses.replace(
        run,
        name=f"{run.name}/{name}",
        output_dir=str(Path(run.output_dir) / f"stage{index}-{name}"),
        model=stage.model,
        parallel=stage.parallel,
        train=train,
        stages=[],
        iq_eval=None,
    )
    try:
        single.validate("")
    except ConfigError as err:
        raise ConfigError(join_key(where, err.key), err.message) from None
    return single


def check_layouts(run: RunConfig, world_size: int, indices: Optional[list[int]] = None) -> None:
    """Refuse, before anything trains, a layout that ``world_size`` processes cannot run: tp x pp must
    divide it (and match ``parallel.dp`` if set) and the global batch must split into micro-batches over
    the DP ranks. A staged run checks every stage in ``indices`` (default: all) under its own key, so a
    later stage's layout is refused at launch, not after the earlier stages have trained."""
    if not run.stages:
        run.train.micro_batches(run.parallel.data_parallel_size(world_size))
        return
    for index in range(len(run.stages)) if indices is None else indices:
        cfg = stage_config(run, index)
        try:
            cfg.train.micro_batches(cfg.parallel.data_parallel_size(world_size))
        except ConfigError as err:
            raise ConfigError(join_key(f"stages[{index}]", err.key), err.message) from None


def _run_level_schedule(
    run: RunConfig, index: int, train: TrainConfig, model: ModelConfig, where: str, entry_tokens: Optional[int]
) -> None:
    """Stage ``index``'s ``train`` section under a ``global`` / ``equivalent_step`` schedule: the
    run-level schedule (in tokens) in this stage's steps, entered at the stage's offset."""
    tokens_per_step = train.global_batch_size * model.seq_length
    total = sum(s.tokens for s in run.stages)
    entry = sum(s.tokens for s in run.stages[:index])
    growth = run.stages[index].growth
    if run.lr_schedule.kind == "equivalent_step" and growth is not None:
        if growth.equivalent_tokens is not None:
            entry = growth.equivalent_tokens
        elif entry_tokens is not None:
            entry = entry_tokens
        # else: not known before the previous stage has trained (training.equivalent_step estimates it
        # from that stage's curve when this stage starts); until then, where the previous stage stopped
    train.schedule_offset_steps = entry // tokens_per_step
    warmup_tokens = run.lr_schedule.warmup_tokens
    if warmup_tokens is None:
        first = from_dict(TrainConfig, dict(to_dict(run.train), **run.stages[0].train), join_key(where, "train"))
        warmup_tokens = first.warmup_steps * first.global_batch_size * run.stages[0].model.seq_length
    train.warmup_steps = math.ceil(warmup_tokens / tokens_per_step)
    train.lr_decay_steps = max(math.ceil(total / tokens_per_step), train.schedule_offset_steps + train.steps)
    train.rewarmup_steps = run.lr_schedule.rewarmup_steps if index > 0 else 0


def load_run_data(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Plain data of a run: YAML file (or defaults when None) with includes and overrides applied."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _resolve_includes(read_yaml(path), Path(path).resolve().parent)
    return apply_overrides(data, overrides or [])


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load, resolve and validate a run config. Errors name the file and the key.

    A staged run's growth transitions are checked where runs are loaded for training
    (``training.stages.load_run``): that needs ``growth/``, a layer above this one."""
    data = load_run_data(path, overrides)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        if path is not None and err.source is None:
            raise ConfigError(err.key, err.message, source=str(path)) from None
        raise


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return to_dict(cfg)
