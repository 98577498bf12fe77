"""Loading a run config: YAML, section includes, dotted overrides, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.config.run import RunConfig
from training.config_base import ConfigError, apply_overrides, from_dict, read_yaml, to_dict

CONFIGS_DIR = Path(__file__).resolve().parent.parent.parent / "configs"


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


def load_run_data(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Plain data of a run: YAML file (or defaults when None) with includes and overrides applied."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _resolve_includes(read_yaml(path), Path(path).resolve().parent)
    return apply_overrides(data, overrides or [])


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load, resolve and validate a run config. Errors name the file and the key.

    A staged run's stages (each stage's merged config, its growth transition) are built and checked
    by ``training.orchestration.stage_plans.load_run``: that needs ``growth/``, a layer above this one."""
    data = load_run_data(path, overrides)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        if path is not None and err.source is None:
            raise ConfigError(err.key, err.message, source=str(path)) from None
        raise


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return to_dict(cfg)
