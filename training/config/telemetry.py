"""The ``logging:`` section: the metric sinks of a run (JSONL always; TensorBoard, progress bar,
experiment trackers optional) and the profiler window.

Trackers (``training.engine.tracking``): ``wandb:`` and/or ``mlflow:`` each log the records of
``metrics.jsonl``, the resolved config once at the start and a staged run's growth transitions as
events, from rank 0, into one tracker run per ``output_dir`` (files under it unless a server is
named). The packages are optional extras (``pip install flm-grow[wandb]`` / ``[mlflow]``).

Profiler (``training.engine.loop.profiler``): ``profile: {start_step, steps, ranks}`` traces the
optimizer steps ``start_step .. start_step + steps - 1`` on the listed ranks (every stage of a
staged run counts its own steps from 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from training.config_base import ConfigError, join_key


@dataclass
class WandbConfig:
    """Weights & Biases: the run's files go to ``<output_dir>/wandb/``."""

    project: str = "flm-grow"
    #: the team or user (null: W&B's default entity of the logged-in user)
    entity: Optional[str] = None
    #: the W&B run's display name (null: the run's ``name``)
    name: Optional[str] = None
    #: W&B's group (null: none)
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    #: online / offline (files only, ``wandb sync`` uploads them later); null: W&B decides
    #: (``WANDB_MODE``, else online)
    mode: Optional[Literal["online", "offline"]] = None


@dataclass
class MLflowConfig:
    """MLflow: the file store ``<output_dir>/mlruns`` unless ``tracking_uri`` names another."""

    #: null: ``file:<output_dir>/mlruns`` (no server); else any MLflow tracking URI
    #: (``http://host:5000``, ``sqlite:///path/mlflow.db``, ``databricks``)
    tracking_uri: Optional[str] = None
    experiment: str = "flm-grow"
    #: the MLflow run's name (null: the run's ``name``)
    run_name: Optional[str] = None


@dataclass
class ProfileConfig:
    """torch.profiler over a window of optimizer steps (TensorBoard trace; on CUDA also a memory
    snapshot), written to ``<output_dir>/profile/``."""

    #: the first profiled optimizer step (steps count from 1)
    start_step: int = 2
    #: how many steps are profiled
    steps: int = 2
    #: the global ranks that profile
    ranks: list[int] = field(default_factory=lambda: [0])

    def validate(self, path: str) -> None:
        if self.start_step < 1:
            raise ConfigError(join_key(path, "start_step"), f"must be >= 1 (steps count from 1), got {self.start_step}")
        if self.steps < 1:
            raise ConfigError(join_key(path, "steps"), f"must be >= 1, got {self.steps}")
        if not self.ranks:
            raise ConfigError(join_key(path, "ranks"), "lists no rank; name at least one (e.g. [0])")
        for i, rank in enumerate(self.ranks):
            if rank < 0:
                raise ConfigError(join_key(path, f"ranks[{i}]"), f"must be a rank >= 0, got {rank}")
        if len(set(self.ranks)) != len(self.ranks):
            raise ConfigError(join_key(path, "ranks"), f"names a rank twice: {self.ranks}")

    @property
    def last_step(self) -> int:
        return self.start_step + self.steps - 1

    def check_steps(self, path: str, train_steps: int) -> None:
        """Refuse a window that ends after the last of ``train_steps`` steps (it would not be traced)."""
        if self.last_step > train_steps:
            raise ConfigError(
                join_key(path, "start_step"),
                f"the window {self.start_step}..{self.last_step} ends after the run's last step {train_steps}; "
                f"choose start_step + steps - 1 <= {train_steps}",
            )

    def check_ranks(self, path: str, world_size: int) -> None:
        """Refuse a rank the job does not have."""
        missing = [r for r in self.ranks if r >= world_size]
        if missing:
            raise ConfigError(
                join_key(path, "ranks"),
                f"rank {missing[0]} does not exist: the job has {world_size} rank(s), 0..{world_size - 1}",
            )


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress_bar: bool = True
    #: peak TFLOP/s of one device for MFU; null = known GPUs are detected, CPUs report no MFU
    peak_tflops: Optional[float] = None
    #: Weights & Biases tracking (null: off)
    wandb: Optional[WandbConfig] = None
    #: MLflow tracking (null: off)
    mlflow: Optional[MLflowConfig] = None
    #: torch.profiler window (null: off)
    profile: Optional[ProfileConfig] = None

    @property
    def trackers(self) -> list[str]:
        """The configured trackers' names (the extras that provide them)."""
        return [name for name in ("wandb", "mlflow") if getattr(self, name) is not None]
