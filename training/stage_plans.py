"""A staged run's growth transitions as plans, the model each stage trains, and loading a run
with them checked.

``load_run`` is how every command that trains, plans or shows a run loads its config: the
config layer validates each section and each stage's merged config; the transitions between
stages need ``growth/`` (a layer above the configs), so they are checked here.

What was verified is what gets trained: a grown stage trains the model its transition produces
(``stage_model``), i.e. the previous stage's model grown by the plan, with the fields the
operators derive (``growth.plan.new_model_config``, ``growth.plan.derived_fields``:
``output_multiplier`` after a hidden clone, ``norm_eps`` after a zero-padded RMSNorm hidden size;
under μP, ``input_multiplier`` after msg/zero hidden growth with tied embeddings) taken from the
growth, not from the stage's ``model:`` section. Any other function-defining field (``ModelConfig.function_fields``) on which the
stage's section disagrees with the grown model is refused at load, naming the key; so is a stage
that changes ``seq_length`` (the data position is counted in samples of one length).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from growth.plan import GrowthPlan, check_plan, derived_fields, new_model_config, plan_for
from training.config import NON_FUNCTION_FIELDS, ModelConfig, RunConfig, load_run_config
from training.config_base import ConfigError


def load_train_args(args) -> RunConfig:
    """The run config of ``flm train``'s arguments: ``args.config`` with ``args.overrides`` and, last,
    ``--output-dir`` (the launcher's pre-launch check and the workers read it the same way)."""
    overrides = [*args.overrides, *([f"output_dir={args.output_dir}"] if args.output_dir else [])]
    return load_run(args.config, overrides)


def load_run(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """``training.config.load_run_config`` plus the checks of a staged run: every transition must
    be a valid growth (errors name the file and the key)."""
    cfg = load_run_config(path, overrides)
    try:
        validate_stages(cfg)
    except ConfigError as err:
        if path is not None and err.source is None:
            raise ConfigError(err.key, err.message, source=str(path)) from None
        raise
    return cfg


def growth_plan(run: RunConfig, index: int, path: str = "") -> GrowthPlan:
    """The ``GrowthPlan`` that turns stage ``index - 1``'s model into stage ``index``'s."""
    return _plan(run, index, stage_model(run, index - 1), path)


def stage_model(run: RunConfig, index: int, path: str = "") -> ModelConfig:
    """The model stage ``index`` trains: stage 0's ``model:``; a grown stage's is the previous
    stage's model grown by its plan (derived fields from the operators) with the stage's own
    ``NON_FUNCTION_FIELDS``. ConfigError when the stage's section disagrees on another
    function-defining field, or changes ``seq_length``."""
    model = run.stages[0].model
    for i in range(1, index + 1):
        stage = run.stages[i]
        where = f"{path}.stages[{i}].model" if path else f"stages[{i}].model"
        if stage.model.seq_length != model.seq_length:
            raise ConfigError(
                f"{where}.seq_length",
                f"{stage.model.seq_length}, but stage {i - 1} trains with {model.seq_length}: a stage "
                "cannot change seq_length (the data position is counted in samples of one length); "
                "keep one seq_length for the whole run",
            )
        grown = new_model_config(_plan(run, i, model, path), model)
        want, have = stage.model.function_values(), grown.function_values()
        derived = derived_fields(model)
        for name, value in want.items():
            if name not in derived and value != have[name]:
                raise ConfigError(
                    f"{where}.{name}",
                    f"{value!r}, but growing stage {i - 1}'s model gives {have[name]!r}: growth keeps "
                    f"{name} (set it to {have[name]!r}, or change it in the first stage)",
                )
        model = dataclasses.replace(grown, **{f: getattr(stage.model, f) for f in NON_FUNCTION_FIELDS})
    return model


def _plan(run: RunConfig, index: int, prev_model: ModelConfig, path: str = "") -> GrowthPlan:
    """The plan from ``prev_model`` (stage ``index - 1``'s model as trained) to stage ``index``'s shape."""
    prev = dataclasses.replace(run.stages[index - 1], model=prev_model)
    stage = run.stages[index]
    g = stage.growth
    where = f"{path}.stages[{index}].growth" if path else f"stages[{index}].growth"
    changed = {
        "hidden": prev.model.hidden_size != stage.model.hidden_size,
        "ffn": prev.model.ffn_hidden_size != stage.model.ffn_hidden_size,
        "heads": (prev.model.num_attention_heads, prev.model.query_groups)
        != (stage.model.num_attention_heads, stage.model.query_groups),
        "depth": prev.model.num_layers != stage.model.num_layers,
    }
    operators = {dim: g.operators.get(dim, g.default_operator if moved else "none") for dim, moved in changed.items()}
    if operators["depth"] == "clone":
        operators["depth"] = "msg"
    try:
        plan = plan_for(
            prev.model,
            stage.model,
            operators,
            tp=stage.parallel.tp,
            old_vocab=prev.model.padded_vocab_size(prev.parallel.tp),
            depth={"placement": g.depth_placement, "init": g.depth_init},
            ramp={"steps": g.ramp_steps, "shape": g.ramp_shape},
            init_std=g.init_std,
            clone_noise=g.clone_noise,
            seed=g.seed,
            exact=g.exact,
        )
        check_plan(plan, prev.model, where)
    except ConfigError as err:
        key = err.key if err.key.startswith(where) else f"{where}.{err.key}"
        raise ConfigError(key, err.message) from None
    return plan


def validate_stages(run: RunConfig) -> None:
    """Every transition must be a valid growth (no shrinking, exactness as requested, TP fits) and
    every stage's ``model:`` section must describe the model its growth produces."""
    if run.stages:
        stage_model(run, len(run.stages) - 1)
