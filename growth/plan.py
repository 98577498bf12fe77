"""``GrowthPlan``: what to grow, with which operator, and how the new structure is brought in.

A plan is a config section (YAML or dict, loaded with ``training.config_base.from_dict``)::

    old: {layers: 2, hidden: 64, ffn: 256, heads: 4, query_groups: 4, head_dim: 16, vocab: 512}
    new: {layers: 4, hidden: 128, ffn: 512, heads: 8, query_groups: 8, head_dim: 16, vocab: 512}
    operators: {hidden: msg, ffn: msg, heads: msg, depth: msg}   # or leave them to default_operator
    depth: {placement: interleave, init: copy}
    ramp: {steps: 1000, shape: linear}
    tp: 1

Besides the shapes and ``tp``, a plan has exactly the options of a staged run's ``growth:`` section
(``training.config.growth.GrowthOptions``: one spelling, one set of defaults).

``GrowthPlan.validate`` checks the plan on its own (called by ``from_dict``); ``check_plan`` checks
it against the model config of the checkpoint being grown (the block variant decides what is
exact) and returns the grown model's config. Every error is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from growth.shape import ModelShape
from training.config import GrowthOptions, ModelConfig
from training.config_base import ConfigError, from_dict, join_key, read_yaml


@dataclass
class GrowthPlan(GrowthOptions):
    """The growth of one model into a larger one: the two shapes, the target TP size, and the options
    every growth shares (``GrowthOptions``: operators, default_operator, depth, ramp, init_std,
    clone_noise, seed, exact; the same spelling and defaults as a staged run's ``growth:`` section).
    After validation every operator is named (``Operators``: none exactly where a dimension keeps
    its size).

    Invariants after ``validate``: no dimension shrinks, the head dim is unchanged, the new sizes
    divide by ``tp``, ``operators`` name one operator exactly for the dimensions that change (with
    the integer factors clone and stack need), and with ``exact`` every operator is function-
    preserving as far as the plan alone tells (``check_plan`` adds the model's block variant)."""

    #: required (the default, all zeros, fails validation)
    old: ModelShape = field(default_factory=ModelShape)
    new: ModelShape = field(default_factory=ModelShape)
    #: tensor-parallel size the grown model will be trained with (sizes must divide by it)
    tp: int = 1

    @property
    def uses_masks(self) -> bool:
        """Whether any dimension grows with msg (the grown model then trains under a mask ramp)."""
        ops = self.operators
        return "msg" in (ops.hidden, ops.ffn, ops.heads, ops.depth)

    def grows(self) -> dict[str, bool]:
        """Which dimensions (``training.config.DIMENSIONS``) change size."""
        old, new = self.old, self.new
        return {
            "hidden": new.hidden != old.hidden,
            "ffn": new.ffn != old.ffn,
            "heads": (new.heads, new.query_groups) != (old.heads, old.query_groups),
            "depth": new.layers != old.layers,
        }

    def validate(self, path: str) -> None:
        """Check the plan on its own (``check_plan`` checks it against the model being grown); names
        every operator left to ``default_operator`` (``GrowthOptions.resolve_operators``)."""
        self.old.validate(join_key(path, "old"))
        self.new.validate(join_key(path, "new"))
        GrowthOptions.validate(self, path)
        self.operators = self.resolve_operators(self.grows(), path)
        old, new, ops = self.old, self.new, self.operators
        if self.tp < 1:
            raise ConfigError(join_key(path, "tp"), "must be >= 1")
        for name in ("layers", "hidden", "ffn", "heads", "query_groups", "vocab"):
            if getattr(new, name) < getattr(old, name):
                raise ConfigError(
                    join_key(path, f"new.{name}"),
                    f"{getattr(new, name)} < old {getattr(old, name)}: growth never shrinks a dimension",
                )
        if new.head_dim != old.head_dim:
            raise ConfigError(
                join_key(path, "new.head_dim"),
                f"must stay {old.head_dim}: no operator changes the head dim (rotary frequencies "
                "depend on it); grow the number of heads instead",
            )
        for name in ("heads", "query_groups", "ffn", "vocab"):
            if getattr(new, name) % self.tp:
                raise ConfigError(
                    join_key(path, f"new.{name}"), f"{getattr(new, name)} is not divisible by the target tp={self.tp}"
                )
        self._check_operators(path)
        if self.uses_masks and self.ramp.steps < 1:
            raise ConfigError(join_key(path, "ramp.steps"), "msg needs a mask ramp of at least 1 step")
        if self.clone_noise > 0 and "clone" not in (ops.hidden, ops.ffn, ops.heads):
            raise ConfigError(join_key(path, "clone_noise"), "only applies to clone; no dimension uses clone")
        if self.exact:
            reasons = inexact_reasons(self)
            if reasons:
                key, why = reasons[0]
                raise ConfigError(
                    join_key(path, key), f"{why}; set exact: false to accept a growth that changes the model's function"
                )

    def _check_operators(self, path: str) -> None:
        old, new, ops = self.old, self.new, self.operators
        grows = {
            "hidden": (new.hidden != old.hidden, f"hidden {old.hidden} -> {new.hidden}"),
            "ffn": (new.ffn != old.ffn, f"ffn {old.ffn} -> {new.ffn}"),
            "heads": (
                (new.heads, new.query_groups) != (old.heads, old.query_groups),
                f"heads/query_groups {old.heads}/{old.query_groups} -> {new.heads}/{new.query_groups}",
            ),
            "depth": (new.layers != old.layers, f"layers {old.layers} -> {new.layers}"),
        }
        for dim, (changes, what) in grows.items():
            op = getattr(ops, dim)
            if changes and op == "none":
                allowed = "msg, zero or stack" if dim == "depth" else "msg, zero or clone"
                raise ConfigError(
                    join_key(path, f"operators.{dim}"),
                    f"{what} needs an operator: {allowed} (name it, or set default_operator)",
                )
            if not changes and op != "none":
                raise ConfigError(
                    join_key(path, f"operators.{dim}"), f"is {op!r} but {what.split(' ')[0]} does not change; use none"
                )
        if ops.hidden == "clone" and new.hidden % old.hidden:
            raise ConfigError(
                join_key(path, "new.hidden"),
                f"clone needs an integer factor: {new.hidden} is not a multiple of {old.hidden}",
            )
        if ops.ffn == "clone" and new.ffn % old.ffn:
            raise ConfigError(
                join_key(path, "new.ffn"), f"clone needs an integer factor: {new.ffn} is not a multiple of {old.ffn}"
            )
        if ops.heads == "clone":
            if new.query_groups % old.query_groups or new.heads_per_group % old.heads_per_group:
                raise ConfigError(
                    join_key(path, "new.heads"),
                    "clone needs query_groups and heads per group each "
                    f"grown by an integer factor: {old.heads}/{old.query_groups} -> "
                    f"{new.heads}/{new.query_groups}",
                )
        if ops.heads in ("msg", "zero") and new.heads_per_group < old.heads_per_group:
            raise ConfigError(
                join_key(path, "new.query_groups"),
                f"{ops.heads} keeps every old query group whole, but heads per group would shrink "
                f"{old.heads_per_group} -> {new.heads_per_group}",
            )
        if ops.depth == "stack":
            if new.layers % old.layers:
                raise ConfigError(
                    join_key(path, "new.layers"),
                    f"stack repeats the whole stack: {new.layers} is not a multiple of {old.layers}",
                )
            if self.depth.init != "copy":
                raise ConfigError(join_key(path, "depth.init"), "stack repeats the trained layers; use copy")


def inexact_reasons(plan: GrowthPlan, cfg: Optional[ModelConfig] = None) -> list[tuple[str, str]]:
    """``[(key, why)]`` for each part of ``plan`` that is not function-preserving.

    Without ``cfg`` only variant-independent reasons are found; with the model config the block
    variant is taken into account too (``check_plan``).
    """
    ops = plan.operators
    out = []
    if ops.depth == "stack":
        out.append(("operators.depth", "stack (G_stack) is never function-preserving"))
    if plan.clone_noise > 0:
        out.append(("clone_noise", "noise on cloned copies breaks function preservation"))
    if cfg is not None and ops.hidden == "zero" and cfg.normalization == "LayerNorm":
        out.append(
            (
                "operators.hidden",
                "zero-padding the hidden size changes LayerNorm's mean and variance; use msg or clone "
                "(zero is exact for RMSNorm)",
            )
        )
    return out


def mup_readout_scale(plan: GrowthPlan, cfg: ModelConfig) -> float:
    """Under μP, the factor the old entries of the readout matrix (the untied output layer, or the
    embedding when tied) are multiplied by; 1 when nothing is rescaled.

    The logits are ``(output_multiplier / m) * y.W^T`` with ``m = hidden / base_width``. A grown
    model keeps every μP setting of its config (``output_multiplier``, ``base_width``,
    ``attention_multiplier``): it is the μP model of its new width. msg/zero hidden growth leaves
    ``y.W^T`` unchanged while ``m`` grows by ``H'/H``, so the readout weights take the factor
    ``H'/H`` (their Adam moments ``H/H'`` and ``(H/H')^2``, ``growth.optimizer_state``). Clone already
    multiplies ``y.W^T`` by ``k = H'/H`` (repeated hidden states), which the ``1/m`` absorbs exactly:
    no rescaling. The head dim never changes (``GrowthPlan.validate``), so neither does the attention
    scale ``attention_multiplier / d_head``; FFN, head and depth growth keep ``m``."""
    if cfg.mup is None or plan.operators.hidden in ("none", "clone"):
        return 1.0
    return plan.new.hidden / plan.old.hidden


def derived_fields(cfg: ModelConfig) -> tuple[str, ...]:
    """The ``ModelConfig`` fields ``new_model_config`` may set on a model grown from ``cfg`` (a staged
    run takes them from the growth, not from the stage's ``model:`` section). Standard
    parametrisation: ``norm_eps`` and ``output_multiplier``; μP: ``norm_eps``, and with tied
    embeddings ``input_multiplier`` (``mup_readout_scale``)."""
    if cfg.mup is None:
        return ("norm_eps", "output_multiplier")
    return ("norm_eps", "input_multiplier") if cfg.tie_embeddings else ("norm_eps",)


def new_model_config(plan: GrowthPlan, cfg: ModelConfig) -> ModelConfig:
    """The ``ModelConfig`` of the grown model (``cfg`` is the old model's)."""
    old, new = plan.old, plan.new
    changes: dict[str, Any] = dict(
        num_layers=new.layers,
        hidden_size=new.hidden,
        ffn_hidden_size=new.ffn,
        num_attention_heads=new.heads,
        num_query_groups=None if new.query_groups == new.heads else new.query_groups,
        kv_channels=None if new.hidden == new.heads * new.head_dim else new.head_dim,
    )
    if plan.operators.hidden == "zero" and cfg.normalization == "RMSNorm":
        # With the hidden zero-padded, mean(x^2) shrinks by H/H'; eps must shrink with it (and the gains by
        # sqrt(H/H'), see operators) for RMSNorm's output to stay exactly the same.
        changes["norm_eps"] = cfg.norm_eps * old.hidden / new.hidden
    if plan.operators.hidden == "clone" and cfg.mup is None:
        # Cloned hidden states repeat each value H'/H times, so y'.W'^T = (H'/H) y.W^T for the repeated
        # output weights; the output multiplier absorbs the factor (tied or untied alike). Under μP the
        # readout's 1/m grows by the same factor: nothing to change (mup_readout_scale).
        changes["output_multiplier"] = cfg.output_multiplier * old.hidden / new.hidden
    readout_scale = mup_readout_scale(plan, cfg)
    if readout_scale != 1.0 and cfg.tie_embeddings:
        # μP, tied: the embedding (the readout) is multiplied by H'/H; its input side compensates
        changes["input_multiplier"] = cfg.input_multiplier / readout_scale
    out = dataclasses.replace(cfg, **changes)
    out.validate("model")
    return out


def check_plan(plan: GrowthPlan, cfg: ModelConfig, path: str = "growth") -> ModelConfig:
    """Validate ``plan`` against the old model's config ``cfg``; return the new model's config."""
    plan.validate(path)
    old = plan.old
    have = ModelShape.from_model_config(cfg)
    for name in ("layers", "hidden", "ffn", "heads", "query_groups", "head_dim"):
        if getattr(old, name) != getattr(have, name):
            raise ConfigError(
                join_key(path, f"old.{name}"),
                f"{getattr(old, name)} but the model being grown has {getattr(have, name)}",
            )
    if old.vocab < cfg.vocab_size or old.vocab % cfg.make_vocab_size_divisible_by:
        raise ConfigError(
            join_key(path, "old.vocab"),
            f"{old.vocab} is not a padding of the model's vocab_size {cfg.vocab_size} "
            f"(a multiple of {cfg.make_vocab_size_divisible_by} x tp, at least vocab_size)",
        )
    new_cfg = new_model_config(plan, cfg)
    padded = new_cfg.padded_vocab_size(plan.tp)
    if plan.new.vocab != padded:
        raise ConfigError(
            join_key(path, "new.vocab"),
            f"{plan.new.vocab}, but the grown model pads vocab_size "
            f"{cfg.vocab_size} to {padded} rows at tp={plan.tp}; set new.vocab: {padded}",
        )
    if plan.exact:
        reasons = inexact_reasons(plan, cfg)
        if reasons:
            key, why = reasons[0]
            raise ConfigError(
                join_key(path, key), f"{why}; set exact: false to accept a growth that changes the model's function"
            )
    return new_cfg


def load_plan(source: str | Path | dict, path: str = "") -> GrowthPlan:
    """A plan from a YAML file or a dict; errors name the key (and the file)."""
    if isinstance(source, dict):
        return from_dict(GrowthPlan, source, path)
    try:
        return from_dict(GrowthPlan, read_yaml(source), path)
    except ConfigError as err:
        if err.source is None:
            raise ConfigError(err.key, err.message, source=str(source)) from None
        raise


def plan_for(
    cfg: ModelConfig, new_cfg: ModelConfig, operators: dict[str, str], *, tp: int = 1, **options: Any
) -> GrowthPlan:
    """Convenience: the plan that grows model config ``cfg`` into ``new_cfg`` (shapes taken from both).

    ``options`` are the other ``GrowthPlan`` sections as plain data (``ramp={"steps": 10}``, ...).
    The old vocabulary is the padding at tp=1; pass ``old_vocab`` for a checkpoint saved at another tp.
    """
    old_vocab = options.pop("old_vocab", cfg.padded_vocab_size(1))
    old = dataclasses.asdict(ModelShape.from_model_config(cfg))
    old["vocab"] = old_vocab
    new = dataclasses.asdict(ModelShape.from_model_config(new_cfg, tp))
    return from_dict(GrowthPlan, {"old": old, "new": new, "operators": operators, "tp": tp, **options})
