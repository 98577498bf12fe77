"""Switch the Hugging Face libraries to offline mode for the rest of the process.

Sets ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` and ``TRANSFORMERS_OFFLINE`` and, because those
libraries read the variables once at import, also flips the module constants of any of them that
are already imported. Afterwards ``huggingface_hub`` refuses every HTTP request (lm-eval's
``hf`` backend would otherwise query the hub for a model's commit hash).
"""

from __future__ import annotations

import os
import sys

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def enable_offline_mode() -> None:
    for var in OFFLINE_VARS:
        os.environ[var] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        ds_config.HF_HUB_OFFLINE = True
        ds_config.HF_DATASETS_OFFLINE = True


def is_offline() -> bool:
    return any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"} for v in OFFLINE_VARS)
