"""A staged run's growth transitions as plans, and loading a run with them checked.

``load_run`` is how every command that trains, plans or shows a run loads its config: the
config layer validates each section and each stage's merged config; the transitions between
stages need ``growth/`` (a layer above the configs), so they are checked here.
"""

from __future__ import annotations

from pathlib import Path

from growth.plan import GrowthPlan, check_plan, plan_for
from training.config import RunConfig, load_run_config
from training.config_base import ConfigError


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
    prev, stage = run.stages[index - 1], run.stages[index]
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
            prev.model, stage.model, operators, tp=stage.parallel.tp,
            old_vocab=prev.model.padded_vocab_size(prev.parallel.tp),
            depth={"placement": g.depth_placement, "init": g.depth_init},
            ramp={"steps": g.ramp_steps, "shape": g.ramp_shape},
            init_std=g.init_std, clone_noise=g.clone_noise, seed=g.seed, exact=g.exact,
        )
        check_plan(plan, prev.model, where)
    except ConfigError as err:
        key = err.key if err.key.startswith(where) else f"{where}.{err.key}"
        raise ConfigError(key, err.message) from None
    return plan


def validate_stages(run: RunConfig) -> None:
    """Every transition must be a valid growth (no shrinking, exactness as requested, TP fits)."""
    for i in range(1, len(run.stages)):
        growth_plan(run, i)
