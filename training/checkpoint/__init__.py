"""The checkpoint format and its IO (layer 2): no model, no engine, no process group of its own.

- ``meta``: the on-disk layout (``step_N/``, ``latest``, ``flm_checkpoint.json``), resolving paths,
  reading metadata, which engine saved a checkpoint;
- ``atomic``: the atomic directory protocol every writer uses (``write_atomically``, ``commit``);
- ``integrity``: file sizes and hashes recorded at save, ``verify``, loading while hashing
  (``load_verified``) and the resume fallback (``resume_verified``);
- ``lock``: the run directory's lock (one job per output_dir);
- ``dcp_io``: tensor-at-a-time reading and streaming writing of torch_dist (DCP) checkpoints;
- ``logical``: checkpoints as full (unsharded) tensors, read and written.
"""

from training.checkpoint.atomic import DiskFullError, commit, write_atomically
from training.checkpoint.integrity import find_resumable, load_verified, resume_verified, verify, verify_collective
from training.checkpoint.meta import (
    LATEST_FILE,
    META_FILE,
    CheckpointError,
    check_engine,
    engine_of,
    is_checkpoint,
    latest_in,
    read_meta,
    resolve,
    step_dir_name,
)

__all__ = [
    "LATEST_FILE",
    "META_FILE",
    "CheckpointError",
    "DiskFullError",
    "check_engine",
    "commit",
    "find_resumable",
    "load_verified",
    "resume_verified",
    "verify",
    "verify_collective",
    "engine_of",
    "is_checkpoint",
    "latest_in",
    "read_meta",
    "resolve",
    "step_dir_name",
    "write_atomically",
]
