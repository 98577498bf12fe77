"""Proxy models: a run config at another width, trained alone in one process.

``proxy_config(base, width, ...)`` is the run a proxy trains: the base run's config (a
single-stage run, or one stage of a staged run) with

- ``model.hidden_size = width``; the head dimension is kept (the base run's ``head_dim``) and the
  heads derived, ``num_attention_heads = width / head_dim``, with the base run's heads per
  query group (GQA ratio) kept; ``ffn_hidden_size`` keeps the base run's ratio to the hidden size
  (rounded). Fixed head dimension, as FLM-101B does (its width-256 proxy has 2 heads of 128, its
  stages heads of 128) and as this project's growth does (``heads`` grows the head count, never
  the head dimension): the proxies are then the same model family as the target. (μP's 1/d
  attention scaling acts on the head dimension, so a coordinate check at fixed head dimension does
  not exercise it; it checks the width scaling of the matrices, learning rates and readout.) Everything else of the model (``mup`` section
  included: ``base_width`` is the width the hyperparameters are tuned at, the same for every
  proxy) is the base run's;
- one process (``parallel``: TP = PP = DP = 1), no growth stages, no IQ evaluation;
- ``train.lr`` and ``train.seed`` when given (``min_lr`` keeps its ratio to ``lr``), ``train.steps``
  when given; the LR schedule starts at the proxy's step 0 (a stage's run-level schedule offset
  and re-warmup dropped: a proxy trains from scratch);
- a final checkpoint only (``checkpoint.save_interval: 0``, ``keep_last: 1``), no TensorBoard,
  no progress bar (proxies run in the background of a sweep).

The proxy's config is built as plain data and loaded with the project's config loader, so it is
validated like any run (errors name the dotted key), and it is what ``flm train`` runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from training.config import ModelConfig, ParallelConfig, RunConfig, run_config_to_dict
from training.config_base import ConfigError, from_dict, to_dict
from training.errors import UsageError
from training.model_size import total_params
from training.orchestration.stage_plans import build_run, load_run


def parse_ints(text: str, option: str, minimum: int = 1) -> list[int]:
    """``64,128,256`` -> sorted distinct ints >= ``minimum`` (UsageError naming ``option`` otherwise)."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < minimum:
        raise UsageError(f"{option}: expected integers >= {minimum}, got {text!r}")
    return values


def parse_widths(text: str, option: str = "--widths") -> list[int]:
    """Widths (hidden sizes): sorted distinct positive ints."""
    return parse_ints(text, option)


def parse_floats(text: str, option: str) -> list[float]:
    """``1e-3,3e-3`` -> sorted distinct positive floats (UsageError naming ``option`` otherwise)."""
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values or values[0] <= 0 or not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option}: values must be finite and > 0, got {text!r}")
    return values


def load_base(config: str, overrides: list[str], stage: Optional[int] = None) -> RunConfig:
    """The single-stage run the proxies derive from: the run config, or stage ``stage`` of a staged
    run (its merged config, with the model the stage trains)."""
    run = load_run(config, overrides)
    cfg = run.config
    if not run.staged:
        if stage is not None:
            raise UsageError(f"--stage {stage}: {config} is not a staged run (it has no stages: list)")
        return cfg
    if stage is None:
        raise UsageError(
            f"{config} is a staged run: pass --stage N (0..{len(run.stages) - 1}) to take the model and "
            "train section of stage N"
        )
    if not 0 <= stage < len(run.stages):
        raise UsageError(f"--stage {stage} is out of range; the run has stages 0..{len(run.stages) - 1}")
    # a proxy trains from scratch over its own steps: the stage's own schedule, not its place in a
    # run-level one (the default lr_schedule is global)
    own = dataclasses.replace(cfg, lr_schedule=dataclasses.replace(cfg.lr_schedule, kind="per_stage"))
    single = build_run(own).stages[stage].config
    single.train.lr_decay_steps = None
    return single


def proxy_model(model: ModelConfig, width: int) -> dict[str, Any]:
    """The base ``model`` at hidden size ``width`` (plain data; see the module docstring)."""
    head_dim = model.head_dim
    if width % head_dim:
        raise UsageError(
            f"width {width} is not a multiple of the head dimension {head_dim} (model.hidden_size "
            f"{model.hidden_size} / {model.num_attention_heads} heads, or model.kv_channels): proxies keep the head "
            f"dimension and derive the heads; choose widths that are multiples of {head_dim}"
        )
    heads = width // head_dim
    per_group = model.num_attention_heads // model.query_groups
    if heads % per_group:
        raise UsageError(
            f"width {width} gives {heads} heads, not divisible into query groups of {per_group} heads "
            f"(the base model's {model.num_attention_heads} heads / {model.query_groups} groups); choose widths "
            f"that are multiples of {head_dim * per_group}"
        )
    data = to_dict(model)
    data.update(
        hidden_size=width,
        num_attention_heads=heads,
        num_query_groups=None if model.num_query_groups is None else heads // per_group,
        ffn_hidden_size=max(1, round(width * model.ffn_hidden_size / model.hidden_size)),
    )
    return data


def proxy_name(width: int, lr: float, seed: int) -> str:
    """A proxy's directory name: ``w<width>-lr<lr>-s<seed>``."""
    return f"w{width}-lr{lr:g}-s{seed}"


def proxy_config(
    base: RunConfig,
    width: int,
    *,
    output_dir: str,
    lr: Optional[float] = None,
    seed: Optional[int] = None,
    steps: Optional[int] = None,
    engine: Optional[str] = None,
) -> RunConfig:
    """The run one proxy trains (validated; see the module docstring)."""
    data = run_config_to_dict(base)
    data["model"] = proxy_model(base.model, width)
    data["parallel"] = to_dict(ParallelConfig())
    data.update(stages=[], iq_eval=None, output_dir=output_dir)
    if engine is not None:
        data["engine"] = engine
    train = data["train"]
    if lr is not None:
        train["min_lr"] = base.train.min_lr * lr / base.train.lr
        train["lr"] = lr
    if seed is not None:
        train["seed"] = seed
    if steps is not None:
        train["steps"] = steps
    train.update(schedule_offset_steps=0, rewarmup_steps=0)
    data["name"] = f"{base.name}-{proxy_name(width, train['lr'], train['seed'])}"
    data["checkpoint"].update(dir=None, save_interval=0, keep_last=1)
    data["logging"].update(tensorboard=False, progress_bar=False)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        raise ConfigError(err.key, f"{err.message} (in the proxy of width {width})") from None


def parametrisation(cfg: RunConfig) -> str:
    """The run's parametrisation in words (for reports)."""
    mup = cfg.model.mup
    if mup is None:
        return "standard parametrisation (model.mup: null)"
    return f"μP (base_width {mup.base_width}, attention_multiplier {mup.attention_multiplier:g})"


def non_embedding_params(model: ModelConfig) -> int:
    """Parameters of the decoder without the token embedding and the output layer: every layer's
    attention and MLP matrices, their biases and norms, and the final norm.

    The size the loss is fitted against (``training.mup.predict``): Kaplan et al. (2020) find the
    loss a clean power law of non-embedding parameters, while counting the ``vocab x hidden``
    embedding (which dominates small proxies: 2048 x 64 is more than a 64-wide layer) bends the
    curve; the embedding's lookup costs no FLOPs per token either. The rotary position embedding
    has no parameters. Counted from the config with ``training.model_size.total_params`` (tested equal
    to the megatron model's own count)."""
    embedding = model.padded_vocab_size(1) * model.hidden_size
    return total_params(model, tp=1) - embedding * (1 if model.tie_embeddings else 2)
