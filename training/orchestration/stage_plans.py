"""A run as the stages it trains: ``load_run`` builds a ``StagedRun`` once, every stage derived there.

``load_run`` is how every command that trains, plans or shows a run loads its config. The config
layer validates each section; here each stage of a staged run becomes a frozen ``Stage``: the
single-stage config it trains (the run's ``train`` section with the stage's overrides, steps from its
token budget, its place in the LR schedule, its own output directory and checkpoint root, and the
model its growth produces), the ``GrowthPlan`` that makes it from the previous stage, and where its
files go. Nothing else derives a stage: the trainer loop (``training.orchestration.stages``), the planner, the μP
tools and the dry run read ``run.stages[i]``.

What was verified is what gets trained: a grown stage trains the model its transition produces,
i.e. the previous stage's model grown by the plan, with the fields the operators derive
(``growth.plan.new_model_config``, ``growth.plan.derived_fields``: ``output_multiplier`` after a
hidden clone, ``norm_eps`` after a zero-padded RMSNorm hidden size; under μP, ``input_multiplier``
after msg/zero hidden growth with tied embeddings) taken from the growth, not from the stage's
``model:`` section. Any other function-defining field (``ModelConfig.function_fields``) on which the
stage's section disagrees with the grown model is refused at load, naming the key; so is a stage
that changes ``seq_length`` (the data position is counted in samples of one length).

A run without ``stages:`` is a ``StagedRun`` of one stage: the run itself (``staged`` is False), so
code that walks stages needs no second path.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from growth.plan import GrowthPlan, check_plan, derived_fields, new_model_config, plan_for
from training.checkpoint.meta import is_checkpoint, step_dir_name
from training.config import (
    FUSED_ADAM_GROWTH,
    NON_FUNCTION_FIELDS,
    GrowthOptions,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
)
from training.config.data import DataConfig
from training.config.lr import peak_for
from training.config_base import ConfigError, from_dict, join_key, to_dict
from training.model_size import flops_per_token, total_params

#: a transition runs the float64 reference check by default up to this many parameters of the grown
#: model (``stages[i].growth.verify_reference`` decides otherwise): its float64 forward passes the
#: ranks' blocks of layers in order and holds a layer in float64 — minutes at 1B parameters, hours
#: at FLM-101B's 51B -> 101B (docs/growth.md,
#: "What each transition check proves"). The engine's check always runs
REFERENCE_CHECK_MAX_PARAMS = 1_000_000_000

#: the directory under a stage's own directory that holds the checkpoint it starts from (the
#: previous stage's final checkpoint grown by the stage's plan)
GROWN_DIR = "grown"

#: how a stage enters the LR schedule: ``own`` — its own warmup and decay over its own steps
#: (``lr_schedule.kind: per_stage``, and a run without stages); ``continues`` — the run-level
#: schedule where the previous stage stopped (``global``; the first stage at its start);
#: ``given`` — the run-level schedule at ``growth.equivalent_tokens``; ``estimated`` — at the
#: equivalent-step entry estimated from the previous stage's curve once it has trained
#: (``Stage.entered_at``; until then the config says where the previous stage stopped)
ScheduleEntry = Literal["own", "continues", "given", "estimated"]


@dataclass(frozen=True)
class Stage:
    """One stage of a run, as trained. ``config`` is a single-stage ``RunConfig`` (no ``stages``)."""

    index: int
    #: the stage's name (``stage<index>`` when the section has none; the run's name for a run without stages)
    name: str
    #: the key errors about this stage are reported under (``stages[<index>]``; "" without stages)
    key: str
    #: what the stage trains: merged train section, steps, LR schedule placement, output_dir,
    #: checkpoint root (``checkpoint.dir`` set per stage) and the grown model (derived fields included)
    config: RunConfig
    #: the stage's ``model:`` section as written (equal to ``config.model`` but for derived fields)
    declared_model: ModelConfig
    #: the plan that grows the previous stage's model into this one (None for the first stage)
    growth: Optional[GrowthPlan]
    #: token budget (``steps x global_batch_size x seq_length`` for a run without stages)
    tokens: int
    schedule_entry: ScheduleEntry
    #: the whole run's token budget (the run-level schedule decays to ``min_lr`` at its end)
    run_tokens: int
    #: whether the transition into this stage runs the float64 reference check besides the engine's
    #: (``growth.verify_reference``; null: models up to ``REFERENCE_CHECK_MAX_PARAMS`` parameters)
    reference_check: bool = False

    @property
    def dir(self) -> Path:
        """The stage's own directory: metrics, TensorBoard, ``growth.json``, ``grown/``."""
        return Path(self.config.output_dir)

    @property
    def checkpoint_root(self) -> Path:
        """Where the stage's ``step_N`` checkpoints go (``checkpoint.dir``, per stage, or ``<dir>/checkpoints``)."""
        return self.config.checkpoint_root

    @property
    def grown_dir(self) -> Path:
        return self.dir / GROWN_DIR

    @property
    def final_checkpoint(self) -> Optional[Path]:
        """The stage's checkpoint at its last step, if it exists (the stage is done)."""
        final = self.checkpoint_root / step_dir_name(self.config.train.steps)
        return final if is_checkpoint(final) else None

    def entered_at(self, tokens: int) -> Stage:
        """This stage entering the run-level schedule at ``tokens`` (an equivalent-step estimate)."""
        if self.schedule_entry != "estimated":
            raise ValueError(f"stage {self.index} does not estimate its schedule entry ({self.schedule_entry})")
        train = self.config.train
        tokens_per_step = train.global_batch_size * self.config.model.seq_length
        offset = tokens // tokens_per_step
        decay = _decay_steps(self.run_tokens, tokens_per_step, offset, train.steps)
        new_train = dataclasses.replace(train, schedule_offset_steps=offset, lr_decay_steps=decay)
        return dataclasses.replace(self, config=dataclasses.replace(self.config, train=new_train))


@dataclass(frozen=True)
class StagedRun:
    """A run config and its stages, each derived once (``load_run``)."""

    #: the run as loaded and validated (its ``stages:`` list as written)
    config: RunConfig
    #: every stage the run trains, in order; one (the run itself) for a run without ``stages:``
    stages: tuple[Stage, ...]
    #: the file the run was loaded from (for error messages), if any
    source: Optional[str] = None

    @property
    def staged(self) -> bool:
        """Whether the run has a ``stages:`` list (a growth run)."""
        return bool(self.config.stages)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    def check_layouts(self, world_size: int, indices: Optional[list[int]] = None) -> None:
        """Refuse, before anything trains, a layout that ``world_size`` processes cannot run: tp x pp
        must divide it (and match ``parallel.dp`` if set) and the global batch must split into
        micro-batches over the DP ranks. Every stage in ``indices`` (default: all) is checked under its
        own key, so a later stage's layout is refused at launch, not after the earlier stages trained."""
        for index in range(len(self.stages)) if indices is None else indices:
            stage = self.stages[index]
            cfg = stage.config
            try:
                cfg.train.micro_batches(cfg.parallel.data_parallel_size(world_size))
            except ConfigError as err:
                raise ConfigError(join_key(stage.key, err.key), err.message) from None


def load_train_args(args) -> StagedRun:
    """The run of ``flm train``'s arguments: ``args.config`` with ``args.overrides`` and, last,
    ``--output-dir`` (the launcher's pre-launch check and the workers read it the same way)."""
    overrides = [*args.overrides, *([f"output_dir={args.output_dir}"] if args.output_dir else [])]
    return load_run(args.config, overrides)


def load_run(path: str | Path | None, overrides: list[str] | None = None) -> StagedRun:
    """``training.config.load_run_config`` and the stages built from it: every stage's merged config
    valid, every transition a valid growth. Errors name the file and the key."""
    cfg = load_run_config(path, overrides)
    try:
        return build_run(cfg, source=None if path is None else str(path))
    except ConfigError as err:
        if path is not None and err.source is None:
            raise ConfigError(err.key, err.message, source=str(path)) from None
        raise


def build_run(cfg: RunConfig, source: Optional[str] = None) -> StagedRun:
    """The ``StagedRun`` of a validated run config (ConfigError naming the stage's key otherwise)."""
    if not cfg.stages:
        tokens = cfg.train.steps * cfg.train.global_batch_size * cfg.model.seq_length
        only = Stage(0, cfg.name, "", cfg, cfg.model, None, tokens, "own", tokens)
        return StagedRun(cfg, (only,), source)
    stages: list[Stage] = []
    model = cfg.stages[0].model
    for i, section in enumerate(cfg.stages):
        key = f"stages[{i}]"
        merged, entry = _stage_config(cfg, i)
        if len(cfg.stages) > 1 and merged.train.optimizer_impl == "fused":
            raise ConfigError("train.optimizer_impl", FUSED_ADAM_GROWTH)
        plan = None
        if i > 0:
            plan = _plan(cfg, i, model, stages[-1].config)
            model = _grown_model(cfg, i, model, plan)
        trained = dataclasses.replace(merged, model=model)
        run_tokens = sum(s.tokens for s in cfg.stages)
        name = section.name or f"stage{i}"
        reference = section.growth.verify_reference if section.growth is not None else None
        if reference is None:
            reference = i > 0 and total_params(model) <= REFERENCE_CHECK_MAX_PARAMS
        stages.append(Stage(i, name, key, trained, section.model, plan, section.tokens, entry, run_tokens, reference))
    return StagedRun(cfg, tuple(stages), source)


def _stage_config(run: RunConfig, index: int) -> tuple[RunConfig, ScheduleEntry]:
    """Stage ``index``'s single-stage config with the model of its section: the run's train section
    with the stage's overrides and LR placement, steps from its token budget, the run's data section
    with the stage's blend (``stages[i].data``), its own output directory
    ``<output_dir>/stage<index>-<name>`` and, when the run sets ``checkpoint.dir``, its own checkpoint
    root ``<checkpoint.dir>/stage<index>-<name>``."""
    stage = run.stages[index]
    where = f"stages[{index}]"
    train = from_dict(TrainConfig, dict(to_dict(run.train), **stage.train), join_key(where, "train"))
    train.steps = stage_steps(stage.tokens, train, stage.model)
    data = run.data
    if stage.data:  # the stage's blend over the run's data section (StageConfig.validate: only kind, datasets)
        data = from_dict(DataConfig, dict(to_dict(run.data), **stage.data), join_key(where, "data"))
    entry: ScheduleEntry = "own"
    if run.lr_schedule.kind == "per_stage":
        if stage.growth is not None and stage.growth.lr_policy == "rewind":
            train.warmup_steps = 0
        elif stage.growth is not None and stage.growth.lr_policy == "restart":
            first = dict(to_dict(run.train), **run.stages[0].train)
            train.warmup_steps = int(first.get("warmup_steps", train.warmup_steps))
    else:
        entry = _run_level_schedule(run, index, train, stage.model, where)
    _check_schedule_options(run, index, entry)
    if stage.start_lr is not None:
        try:
            train.lr = peak_for(
                stage.start_lr,
                train.schedule_offset_steps + 1,
                min_lr=train.min_lr,
                warmup=train.warmup_steps,
                decay=train.lr_decay_steps or train.steps,
                style=train.lr_decay_style,
            )
        except ValueError as err:
            raise ConfigError(join_key(where, "start_lr"), f"no peak LR starts this stage there: {err}") from None
    dirname = f"stage{index}-{stage.name or f'stage{index}'}"
    ckpt = run.checkpoint
    if ckpt.dir:
        ckpt = dataclasses.replace(ckpt, dir=str(Path(ckpt.dir) / dirname))
    single = dataclasses.replace(
        run,
        name=f"{run.name}/{stage.name or f'stage{index}'}",
        output_dir=str(Path(run.output_dir) / dirname),
        model=stage.model,
        parallel=stage.parallel,
        train=train,
        data=data,
        checkpoint=ckpt,
        stages=[],
        iq_eval=None,
    )
    try:
        single.validate("")
    except ConfigError as err:
        raise ConfigError(join_key(where, err.key), err.message) from None
    return single, entry


def _check_schedule_options(run: RunConfig, index: int, entry: ScheduleEntry) -> None:
    """Refuse, naming the key, an LR option the run's ``lr_schedule.kind`` would not honour."""
    stage = run.stages[index]
    where = f"stages[{index}]"
    kind = run.lr_schedule.kind
    if run.lr_schedule.progress == "flops" and kind != "global":
        raise ConfigError(
            "lr_schedule.progress",
            f"flops applies to kind global; {kind} places each stage by tokens: remove it or use kind global",
        )
    if kind == "per_stage":
        for name in ("rewarmup_steps", "warmup_tokens"):
            if getattr(run.lr_schedule, name):
                raise ConfigError(
                    f"lr_schedule.{name}",
                    "applies to a run-level schedule (kind global or equivalent_step); under per_stage each "
                    "stage warms up by its growth.lr_policy: remove it",
                )
        if stage.start_lr is not None:
            raise ConfigError(
                join_key(where, "start_lr"),
                "applies to a run-level schedule; under per_stage set the stage's peak stages[i].train.lr",
            )
        return
    if run.train.lr_decay_steps is not None or "lr_decay_steps" in stage.train:
        key = join_key(where, "train.lr_decay_steps") if "lr_decay_steps" in stage.train else "train.lr_decay_steps"
        raise ConfigError(key, f"the {kind} schedule decays to min_lr at the run's last token: remove it")
    if "schedule_offset_steps" in stage.train or run.train.schedule_offset_steps:
        raise ConfigError(
            join_key(where, "train.schedule_offset_steps"),
            f"is derived from the stage's place in the {kind} schedule: remove it",
        )
    if "warmup_steps" in stage.train and (index > 0 or run.lr_schedule.warmup_tokens is not None):
        raise ConfigError(
            join_key(where, "train.warmup_steps"),
            f"the {kind} schedule warms up once (lr_schedule.warmup_tokens, else the first stage's warmup_steps); "
            "a grown stage re-warms with train.rewarmup_steps or lr_schedule.rewarmup_steps",
        )
    if stage.start_lr is not None:
        if index == 0:
            raise ConfigError(
                join_key(where, "start_lr"), "the first stage starts the schedule: its train.lr is the peak"
            )
        if "lr" in stage.train:
            raise ConfigError(
                join_key(where, "start_lr"), "and train.lr both set: start_lr derives the stage's peak; keep one"
            )
        if entry == "estimated":
            raise ConfigError(
                join_key(where, "start_lr"),
                "needs the stage's entry at load: give growth.equivalent_tokens, or use lr_schedule.kind=global",
            )


def stage_steps(tokens: int, train: TrainConfig, model: ModelConfig) -> int:
    """Optimizer steps of a stage: its token budget in global batches, rounded up."""
    return max(1, math.ceil(tokens / (train.global_batch_size * model.seq_length)))


def _run_level_schedule(
    run: RunConfig, index: int, train: TrainConfig, model: ModelConfig, where: str
) -> ScheduleEntry:
    """Stage ``index``'s ``train`` section under a ``global`` / ``equivalent_step`` schedule: the
    run-level schedule (in tokens, or FLOPs with ``lr_schedule.progress: flops``: each stage's tokens times
    its section model's FLOPs per token) in this stage's steps, entered at the stage's offset."""
    # the schedule's unit per token of each stage: 1 (progress: tokens) or its FLOPs per token
    weight = [1.0] * len(run.stages)
    if run.lr_schedule.progress == "flops":
        weight = [flops_per_token(s.model) for s in run.stages]
    per_step = train.global_batch_size * model.seq_length * weight[index]  # schedule units per step
    total = sum(s.tokens * w for s, w in zip(run.stages, weight))
    entry_units = sum(s.tokens * w for s, w in zip(run.stages[:index], weight))
    growth = run.stages[index].growth
    entry: ScheduleEntry = "continues"
    if run.lr_schedule.kind == "equivalent_step" and growth is not None:
        if growth.equivalent_tokens is not None:
            entry_units, entry = growth.equivalent_tokens, "given"
        else:
            # not known before the previous stage has trained (training.orchestration.equivalent_step estimates it from
            # that stage's curve when this stage starts: Stage.entered_at); until then, where it stopped
            entry = "estimated"
    train.schedule_offset_steps = int(entry_units // per_step)
    warmup_tokens = run.lr_schedule.warmup_tokens
    if warmup_tokens is None:
        first = from_dict(TrainConfig, dict(to_dict(run.train), **run.stages[0].train), join_key(where, "train"))
        warmup_tokens = first.warmup_steps * first.global_batch_size * run.stages[0].model.seq_length
    train.warmup_steps = math.ceil(warmup_tokens * weight[0] / per_step)  # warmup_tokens: the first stage's
    train.lr_decay_steps = _decay_steps(total, per_step, train.schedule_offset_steps, train.steps)
    if index == 0:
        train.rewarmup_steps = 0
    elif "rewarmup_steps" not in run.stages[index].train:  # a stage's own re-warmup wins (FLM-101B: 100, 109)
        train.rewarmup_steps = run.lr_schedule.rewarmup_steps
    return entry


def _decay_steps(run_units: float, units_per_step: float, offset: int, steps: int) -> int:
    """Where a stage's run-level schedule reaches ``min_lr``: the run's last token (or FLOP), in this
    stage's steps (never before the stage's own last step)."""
    return max(math.ceil(run_units / units_per_step), offset + steps)


def _grown_model(run: RunConfig, index: int, prev_model: ModelConfig, plan: GrowthPlan) -> ModelConfig:
    """The model stage ``index`` trains: ``prev_model`` grown by ``plan`` (derived fields from the
    operators) with the stage's own ``NON_FUNCTION_FIELDS``. ConfigError when the stage's section
    disagrees on another function-defining field, or changes ``seq_length``."""
    stage = run.stages[index]
    where = f"stages[{index}].model"
    if stage.model.seq_length != prev_model.seq_length:
        raise ConfigError(
            f"{where}.seq_length",
            f"{stage.model.seq_length}, but stage {index - 1} trains with {prev_model.seq_length}: a stage "
            "cannot change seq_length (the data position is counted in samples of one length); "
            "keep one seq_length for the whole run",
        )
    grown = new_model_config(plan, prev_model)
    want, have = stage.model.function_values(), grown.function_values()
    derived = derived_fields(prev_model)
    for name, value in want.items():
        if name not in derived and value != have[name]:
            raise ConfigError(
                f"{where}.{name}",
                f"{value!r}, but growing stage {index - 1}'s model gives {have[name]!r}: growth keeps "
                f"{name} (set it to {have[name]!r}, or change it in the first stage)",
            )
    return dataclasses.replace(grown, **{f: getattr(stage.model, f) for f in NON_FUNCTION_FIELDS})


def _plan(run: RunConfig, index: int, prev_model: ModelConfig, prev: RunConfig) -> GrowthPlan:
    """The plan from ``prev_model`` (stage ``index - 1``'s model as trained, under ``prev``'s layout)
    to stage ``index``'s shape, with the stage's growth options."""
    stage = run.stages[index]
    assert stage.growth is not None  # RunConfig.validate: every stage after the first has a growth section
    where = f"stages[{index}].growth"
    options = {f.name: to_dict(getattr(stage.growth, f.name)) for f in dataclasses.fields(GrowthOptions)}
    try:
        plan = plan_for(
            prev_model,
            stage.model,
            options.pop("operators"),
            tp=stage.parallel.tp,
            old_vocab=prev_model.padded_vocab_size(prev.parallel.tp),
            **options,
        )
        check_plan(plan, prev_model, where)
    except ConfigError as err:
        key = err.key if err.key.startswith(where) else f"{where}.{err.key}"
        raise ConfigError(key, err.message) from None
    return plan
