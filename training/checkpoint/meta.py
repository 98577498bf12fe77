"""The checkpoint format: where checkpoints are, what their metadata says, which engine wrote them.

Layout on disk::

    <root>/step_0000010/        one checkpoint: dist-checkpoint files + flm_checkpoint.json
    <root>/latest               text file naming the newest *complete* checkpoint directory

``flm_checkpoint.json`` holds what tools need without torch: step, consumed samples, the run
config, the layout it was saved under, the growth-mask state and the ``engine`` that saved it.
Writing is ``training.checkpoint.atomic``; the engines' save/load of model and optimizer state is
``training.engine.megatron_checkpoint`` and ``training.engine.ds_checkpoint``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from training.errors import FLMError

FORMAT_VERSION = 1
META_FILE = "flm_checkpoint.json"
LATEST_FILE = "latest"


class CheckpointError(FLMError, RuntimeError):
    """A checkpoint path or its content is unusable; the message names the path and the way out."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def is_checkpoint(path: Path) -> bool:
    return (path / META_FILE).is_file()


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a checkpoint directory, or of the latest checkpoint under a root."""
    path = Path(path)
    if not (path / META_FILE).is_file() and (path / LATEST_FILE).is_file():
        path = resolve(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint of this project (no {META_FILE}); pass a step_N directory "
            "or a checkpoint root that has a 'latest' file"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{meta_path} is corrupt ({err.__class__.__name__}: {err}); "
            "resume from another checkpoint (flm ckpt verify checks one)"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is corrupt (not a JSON object)")
    return meta


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a root whose ``latest`` names one."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        target = path / latest.read_text().strip()
        if is_checkpoint(target):
            return target
        raise CheckpointError(f"{latest} names {target}, which is not a complete checkpoint")
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    raise CheckpointError(f"no checkpoint in {path}: neither {META_FILE} nor a '{LATEST_FILE}' file")


def latest_in(root: str | Path) -> Optional[Path]:
    try:
        return resolve(root)
    except CheckpointError:
        return None


def engine_of(meta: dict[str, Any]) -> str:
    """The engine that saved a checkpoint (checkpoints from before the DeepSpeed engine: megatron)."""
    return meta.get("engine") or "megatron"


def check_engine(path: str | Path, engine: str) -> None:
    """Resuming needs the optimizer state in the engine's own form; name the way out otherwise."""
    saved = engine_of(read_meta(path))
    if saved != engine:
        raise CheckpointError(
            f"{path} was saved by engine: {saved} and cannot be resumed by engine: {engine}; resume it with "
            f"engine={saved}, or start this run from its weights with --init-from (fresh optimizer, step 0)"
        )
