"""The checkpoint format and its IO (layer 2): no model, no engine, no process group of its own.

- ``meta``: the on-disk layout (``step_N/``, ``latest``, ``flm_checkpoint.json``), resolving paths,
  reading metadata, which engine saved a checkpoint;
- ``atomic``: the atomic directory protocol every writer uses (``write_atomically``, ``commit``);
- ``dcp_io``: tensor-at-a-time reading and streaming writing of torch_dist (DCP) checkpoints;
- ``logical``: checkpoints as full (unsharded) tensors, read and written.
"""

from training.checkpoint.atomic import commit, write_atomically
from training.checkpoint.meta import (LATEST_FILE, META_FILE, CheckpointError, check_engine, engine_of, is_checkpoint,
                                      latest_in, read_meta, resolve, step_dir_name)

__all__ = [
    "LATEST_FILE", "META_FILE", "CheckpointError", "check_engine", "commit", "engine_of", "is_checkpoint", "latest_in",
    "read_meta", "resolve", "step_dir_name", "write_atomically",
]
