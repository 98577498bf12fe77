"""The run configuration (layer 0): typed sections, their defaults, and the rules between fields.

A run YAML has the sections below. A section may instead be a string naming another YAML file
(``model: models/tiny.yaml``), resolved relative to the run file and then to ``configs/``; dotted
overrides (``train.lr=3e-4 parallel.tp=2``) apply after that. ``load_run_config`` returns a
validated ``RunConfig``; every error is a ``ConfigError`` naming the key and the allowed values.

One module per concern: ``model`` (the model section, which ``growth/`` needs), ``layout`` (the
``parallel:`` section), ``growth`` (the growth options a plan file and a stage's ``growth:`` share),
``stages`` (a staged run's ``stages:`` entries), ``run`` (the other sections and ``RunConfig``),
``load`` (YAML, includes, overrides). The names are re-exported here, so ``from training.config
import RunConfig`` is how code outside the package imports them. A staged run's stages as trained
are built one layer up, by ``training.orchestration.stage_plans.load_run``.
"""

from training.config.growth import (
    DIMENSIONS,
    DefaultOperator,
    DepthOperator,
    DepthOptions,
    GrowthOptions,
    Operators,
    RampOptions,
    WidthOperator,
)
from training.config.layout import ParallelConfig, check_deepspeed_layout
from training.config.load import CONFIGS_DIR, load_run_config, load_run_data, run_config_to_dict
from training.config.model import NON_FUNCTION_FIELDS, ModelConfig, MuPConfig
from training.config.run import (
    FUSED_ADAM_GROWTH,
    IQ_EVAL_RECORD,
    CheckpointConfig,
    DeepSpeedConfig,
    DivergenceConfig,
    IQEvalConfig,
    LoggingConfig,
    LRScheduleConfig,
    RunConfig,
    TrainConfig,
)
from training.config.stages import StageConfig, StageGrowthConfig
from training.config.telemetry import MLflowConfig, ProfileConfig, WandbConfig

__all__ = [
    "CONFIGS_DIR",
    "DIMENSIONS",
    "FUSED_ADAM_GROWTH",
    "IQ_EVAL_RECORD",
    "NON_FUNCTION_FIELDS",
    "CheckpointConfig",
    "DeepSpeedConfig",
    "DefaultOperator",
    "DepthOperator",
    "DepthOptions",
    "DivergenceConfig",
    "GrowthOptions",
    "IQEvalConfig",
    "LRScheduleConfig",
    "LoggingConfig",
    "MLflowConfig",
    "ModelConfig",
    "MuPConfig",
    "Operators",
    "ParallelConfig",
    "ProfileConfig",
    "RampOptions",
    "RunConfig",
    "StageConfig",
    "StageGrowthConfig",
    "TrainConfig",
    "WandbConfig",
    "WidthOperator",
    "check_deepspeed_layout",
    "load_run_config",
    "load_run_data",
    "run_config_to_dict",
]
