"""The experiment trackers of one ``flm train`` job, opened once on global rank 0 for every rank."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch.distributed as dist

from training.config import RunConfig, run_config_to_dict
from training.engine import tracking


def open_job_tracker(config: RunConfig, run_dir: Path) -> Optional[tracking.Trackers]:
    """Collective: rank 0 opens the trackers ``config.logging`` sets (``training.engine.tracking``)
    for the run in ``run_dir``, logging the resolved config once; the other ranks get None. A tracker
    that cannot start raises ``TrackerError`` on every rank, so none waits in a collective for it."""
    if not config.logging.trackers:
        return None
    tracker, error = None, None
    if dist.get_rank() == 0:
        try:
            tracker = tracking.open_trackers(
                config.logging, run_dir=run_dir, name=config.name, config=run_config_to_dict(config)
            )
        except tracking.TrackerError as err:
            error = str(err)
    payload = [error]
    dist.broadcast_object_list(payload, src=0)
    if payload[0] is not None:
        raise tracking.TrackerError(payload[0])
    return tracker
