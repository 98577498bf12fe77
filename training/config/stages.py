"""A staged run's ``stages:`` entries: ``StageConfig`` and its ``growth:`` section.

The stages as trained (merged configs, grown models, plans, directories) are built from these by
``training.orchestration.stage_plans.load_run``, a layer above (it needs ``growth/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from training.config.growth import GrowthOptions
from training.config.layout import ParallelConfig
from training.config.model import ModelConfig
from training.config_base import ConfigError, join_key


@dataclass
class StageGrowthConfig(GrowthOptions):
    """How the previous stage's final checkpoint grows into this stage (docs/growth.md): the growth
    options a plan file has (``training.config.growth.GrowthOptions``: operators, default_operator,
    depth, ramp, init_std, clone_noise, seed, exact), with the shapes taken from the two stages'
    models, and how the stage enters the LR schedule."""

    #: with ``lr_schedule: {kind: per_stage}``, the LR at the start of the stage: inherit = this stage's
    #: start LR with its (short) warmup (FLM-101B);
    #: rewind = straight back to this stage's peak LR, no warmup (MSG); restart = full warmup again,
    #: as long as the first stage's (G_stack)
    lr_policy: Literal["inherit", "rewind", "restart"] = "inherit"
    #: with ``lr_schedule: {kind: equivalent_step}``: where (in tokens of the run-level schedule) this
    #: stage enters the schedule; null estimates it from the previous stage's curve
    equivalent_tokens: Optional[int] = None
    #: the float64 reference check of the transition (its layers spread over the ranks, a layer at a time in float64);
    #: null: on for grown models up to 1B parameters (``training.orchestration.stage_plans.REFERENCE_CHECK_MAX_PARAMS``).
    #: The engine's check (same batch, both layouts, the run's precision, every rank) always runs
    verify_reference: Optional[bool] = None

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.equivalent_tokens is not None and self.equivalent_tokens < 0:
            raise ConfigError(join_key(path, "equivalent_tokens"), "must be >= 0")


#: what a stage's ``data:`` section may set: the blend it trains on. The rest of the data section is
#: the run's: the sample-order seed, the held-out split, the tokenizer and reset_at_eos are one for
#: the whole run (a stage continuing a dataset continues its order: training.data.position)
STAGE_DATA_KEYS = ("kind", "datasets")


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
    #: under a run-level LR schedule (``lr_schedule.kind: global``, or ``equivalent_step`` with
    #: ``growth.equivalent_tokens``), the LR where this grown stage enters the schedule (its re-warmup
    #: rises to it); the stage's peak ``train.lr`` is derived from it (FLM-101B: 3.4e-4, 2e-4). null:
    #: the stage's ``train.lr`` is its peak
    start_lr: Optional[float] = None
    #: the stage's blend, over the run's ``data`` section: ``kind`` (default | prepared) and ``datasets``
    #: (``[{path, weight}]``). Datasets the stage shares with the previous one continue where they
    #: stopped (docs/data.md, "Data per stage"); empty: the run's blend
    data: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        if self.tokens <= 0:
            raise ConfigError(join_key(path, "tokens"), f"the token budget must be > 0, got {self.tokens}")
        if "steps" in self.train:
            raise ConfigError(join_key(path, "train.steps"), "a stage's length is its token budget; set tokens instead")
        if self.start_lr is not None and self.start_lr <= 0:
            raise ConfigError(join_key(path, "start_lr"), f"must be > 0 (or null), got {self.start_lr}")
        for key in self.data:
            if key not in STAGE_DATA_KEYS:
                raise ConfigError(
                    join_key(path, f"data.{key}"),
                    f"is one for the whole run (a stage may set only {', '.join(STAGE_DATA_KEYS)}); "
                    "set it in the run's data section",
                )
        if self.data.get("kind") == "mock":
            raise ConfigError(
                join_key(path, "data.kind"), "a stage's data is a blend of datasets: kind default or prepared"
            )
