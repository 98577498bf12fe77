"""The profiler: torch.profiler over a window of optimizer steps on chosen ranks (``logging.profile``).

On a rank of ``ranks``, the steps ``start_step .. start_step + steps - 1`` run under
``torch.profiler.profile`` (CPU activity, and CUDA's on a GPU; shapes and memory recorded); each
step is marked ``ProfilerStep#<step>`` with the trainer's step number (the marker TensorBoard's
profiler plugin splits steps by). When the window ends, the
trace is written by ``torch.profiler.tensorboard_trace_handler`` to
``<output_dir>/profile/rank<r>.<timestamp>.pt.trace.json`` (TensorBoard's profiler plugin reads the
folder; the file is Chrome-trace JSON, also readable by Perfetto). On CUDA the window also records
the allocator's history and writes ``profile/rank<r>_memory_snapshot.pickle``
(``torch.cuda.memory._dump_snapshot``; https://pytorch.org/memory_viz draws it).

A resumed run inside the window profiles the window's remaining steps; a window that a resumed run
has passed, or that a rollback re-enters, is not profiled again (one trace per window and fit).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch.profiler import ProfilerActivity, profile, record_function, tensorboard_trace_handler

from training.config import ProfileConfig

log = logging.getLogger(__name__)

#: the folder under the run's output directory that holds the traces and snapshots
PROFILE_DIR = "profile"
#: allocator events the CUDA memory history keeps (the newest win)
MEMORY_HISTORY_ENTRIES = 100_000


class StepProfiler:
    """``before_step(n)`` / ``after_step(n)`` around optimizer step ``n``; ``close`` ends a window cut
    short (the run stopped inside it) and writes what was traced."""

    def __init__(self, cfg: Optional[ProfileConfig], out_dir: Path, *, rank: int, world_size: int):
        """Raises ``ConfigError`` (``logging.profile.ranks``) for a rank the job does not have."""
        if cfg is not None:
            cfg.check_ranks("logging.profile", world_size)
        self.cfg = cfg
        self.rank = rank
        self.dir = Path(out_dir) / PROFILE_DIR
        #: whether this rank profiles at all
        self.enabled = cfg is not None and rank in cfg.ranks
        self._prof: Optional[profile] = None
        self._marker: Optional[record_function] = None
        self._done = False
        self._cuda = torch.cuda.is_available()

    @property
    def snapshot_path(self) -> Path:
        return self.dir / f"rank{self.rank}_memory_snapshot.pickle"

    def before_step(self, step: int) -> None:
        cfg = self.cfg
        if not self.enabled or self._done or cfg is None or not cfg.start_step <= step <= cfg.last_step:
            return
        if self._prof is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._cuda:
                torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
            self._prof = profile(
                activities=activities,
                on_trace_ready=tensorboard_trace_handler(str(self.dir), worker_name=f"rank{self.rank}"),
                record_shapes=True,
                profile_memory=True,
            )
            self._prof.start()
        # the step marker TensorBoard's profiler plugin splits steps by, with the trainer's step number
        self._marker = record_function(f"ProfilerStep#{step}")
        self._marker.__enter__()

    def after_step(self, step: int) -> None:
        if self._prof is None or self.cfg is None:
            return
        self._end_marker()
        if step >= self.cfg.last_step:
            self._finish()

    def close(self) -> None:
        if self._prof is not None:
            self._end_marker()
            self._finish()

    def _end_marker(self) -> None:
        if self._marker is not None:
            self._marker.__exit__(None, None, None)
            self._marker = None

    def _finish(self) -> None:
        assert self._prof is not None
        self._prof.stop()  # calls the trace handler: the trace file is written
        self._prof = None
        self._done = True
        if self._cuda:
            torch.cuda.memory._dump_snapshot(str(self.snapshot_path))
            torch.cuda.memory._record_memory_history(enabled=None)
        log.info(
            "rank %d: profiler trace of steps %d..%d in %s%s",
            self.rank,
            self.cfg.start_step if self.cfg else 0,
            self.cfg.last_step if self.cfg else 0,
            self.dir,
            f", CUDA memory snapshot {self.snapshot_path}" if self._cuda else "",
        )
