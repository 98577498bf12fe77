"""Experiment trackers: Weights & Biases and MLflow as sinks of a run's metrics records.

A tracker is one more sink beside ``metrics.MetricsSink`` (same ``log(record)`` / ``close()``):
``BaseTrainer.fit`` hands it every record it writes to ``metrics.jsonl``, unchanged. It also takes
``event(name, fields, tokens=...)`` (a staged run's growth transitions, ``training.orchestration.stages``).
The job opens the trackers once (``open_trackers``, on global rank 0 only: every rank builds the
same records, and the config and the events are rank 0's) and closes them at its end, so a
staged run is ONE tracker run across its stages.

Axis: every record and event carries ``tokens`` (the run's consumed tokens, continued across
growth), and the trackers plot against it: W&B's ``define_metric("*", step_metric="tokens")``,
MLflow's metric ``step = tokens``. Steps restart in every stage; tokens do not.

Where the files go (``logging.wandb`` / ``logging.mlflow``, ``training.config.telemetry``):
``<output_dir>/wandb/`` (W&B; offline mode writes only there, ``wandb sync`` uploads it) and the
MLflow file store ``<output_dir>/mlruns`` unless ``tracking_uri`` names a server. The tracker
runs' ids are kept in ``<output_dir>/tracking.json``: a resumed job, or the next stage's job of a
run trained stage by stage, continues the same tracker runs (records of steps re-run after a
resume appear again, at the same tokens; ``metrics.jsonl`` keeps one per step).

The resolved config (``flm config show``'s) is logged once, when the tracker run is created: W&B's
run config; MLflow's params (dotted keys) and the ``config.json`` artifact.

The packages are optional (``pip install flm-grow[wandb]`` / ``flm-grow[mlflow]``):
``check_available`` refuses a configured tracker whose package is absent, in one line, on every
rank before anything trains.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

from training.config import LoggingConfig, MLflowConfig, WandbConfig
from training.errors import FLMError

#: where a run directory records its tracker runs' ids
TRACKING_FILE = "tracking.json"
#: the record field the trackers plot against
AXIS = "tokens"
#: MLflow accepts at most this many params per ``log_batch``
_MLFLOW_PARAMS_PER_BATCH = 100


class TrackerError(FLMError):
    """A configured tracker cannot be used (package missing, run not startable); the message says
    what to install or set."""


def check_available(logging: LoggingConfig) -> None:
    """Raise ``TrackerError`` naming the extra to install when a configured tracker's package is
    absent (without importing it: cheap enough for every rank)."""
    for name in logging.trackers:
        if importlib.util.find_spec(name) is None:
            raise TrackerError(
                f"logging.{name} is set but the {name} package is not installed: "
                f"pip install 'flm-grow[{name}]' (or remove logging.{name})"
            )


class Tracker(ABC):
    """One tracker run of one training job's output directory."""

    #: the tracker run's id (kept in ``tracking.json``)
    run_id: str

    @abstractmethod
    def log(self, record: dict[str, Any]) -> None:
        """One metrics record (the dict ``metrics.jsonl`` gets), at ``record["tokens"]``."""

    @abstractmethod
    def event(self, name: str, fields: dict[str, Any], *, tokens: int) -> None:
        """A named event (e.g. ``growth``) with its fields, at ``tokens``."""

    @abstractmethod
    def close(self) -> None:
        """Finish the tracker run (its files complete)."""


class Trackers(Tracker):
    """The configured trackers as one sink."""

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = trackers
        self.run_id = ",".join(t.run_id for t in trackers.values())

    def log(self, record: dict[str, Any]) -> None:
        for tracker in self.trackers.values():
            tracker.log(record)

    def event(self, name: str, fields: dict[str, Any], *, tokens: int) -> None:
        for tracker in self.trackers.values():
            tracker.event(name, fields, tokens=tokens)

    def close(self) -> None:
        for tracker in self.trackers.values():
            tracker.close()


def open_trackers(logging: LoggingConfig, *, run_dir: Path, name: str, config: dict[str, Any]) -> Optional[Trackers]:
    """The trackers ``logging`` configures for the run in ``run_dir`` (None when there are none).
    Call on global rank 0 only. Continues the tracker runs ``run_dir/tracking.json`` names, else
    creates them (logging ``config``) and records their ids there."""
    if not logging.trackers:
        return None
    check_available(logging)
    run_dir.mkdir(parents=True, exist_ok=True)
    ids_path = run_dir / TRACKING_FILE
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    opened: dict[str, Tracker] = {}
    try:
        if logging.wandb is not None:
            opened["wandb"] = WandbTracker(
                logging.wandb, run_dir=run_dir, name=name, config=config, run_id=ids.get("wandb")
            )
        if logging.mlflow is not None:
            opened["mlflow"] = MLflowTracker(
                logging.mlflow, run_dir=run_dir, name=name, config=config, run_id=ids.get("mlflow")
            )
    except BaseException:
        for tracker in opened.values():
            tracker.close()
        raise
    ids.update({key: tracker.run_id for key, tracker in opened.items()})
    tmp = ids_path.with_name(TRACKING_FILE + ".tmp")
    tmp.write_text(json.dumps(ids, indent=2) + "\n")
    os.replace(tmp, ids_path)
    return Trackers(opened)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of nested dicts and lists (``stages.1.model.hidden_size``) to their leaf values."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, (list, tuple)) and data and any(isinstance(v, (dict, list, tuple)) for v in data):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


class WandbTracker(Tracker):
    """Weights & Biases: one W&B run, files under ``<run_dir>/wandb/``."""

    def __init__(self, cfg: WandbConfig, *, run_dir: Path, name: str, config: dict[str, Any], run_id: Optional[str]):
        import wandb  # optional heavy dependency (the flm-grow[wandb] extra), loaded where logging.wandb is set

        kwargs: dict[str, Any] = {}
        if cfg.mode is not None:
            kwargs["mode"] = cfg.mode
        try:
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                name=cfg.name or name,
                group=cfg.group,
                tags=cfg.tags or None,
                dir=str(run_dir),
                id=run_id,
                resume="allow" if run_id else None,
                config=config if run_id is None else None,
                # the job's own log lines stay on its console; W&B does not wrap stdout/stderr
                settings=wandb.Settings(console="off"),
                **kwargs,
            )
        except Exception as err:  # W&B's errors (no API key, no network) as one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrackerError(
                f"logging.wandb: W&B could not start a run: {first}; "
                "for files only set logging.wandb.mode=offline (or WANDB_MODE=offline)"
            ) from None
        self.run_id = self.run.id
        self.run.define_metric(AXIS)
        self.run.define_metric("*", step_metric=AXIS)

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(dict(record))

    def event(self, name: str, fields: dict[str, Any], *, tokens: int) -> None:
        self.run.log({**{f"{name}/{key}": value for key, value in fields.items()}, AXIS: tokens})

    def close(self) -> None:
        self.run.finish()


class MLflowTracker(Tracker):
    """MLflow: one run of experiment ``cfg.experiment``; numbers as metrics at ``step = tokens``.

    MLflow metrics are numbers: a record's ``None`` and text fields (``skip_reason``) are left out
    of MLflow (the numeric ``skipped`` / ``consecutive_skips`` say the same); events are also kept
    whole as artifacts ``events/<name>-<tokens>.json``."""

    def __init__(self, cfg: MLflowConfig, *, run_dir: Path, name: str, config: dict[str, Any], run_id: Optional[str]):
        uri = cfg.tracking_uri or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow >= 3.x keeps the file store in maintenance mode and refuses it unless this is set;
            # it is the backend that needs no server and no database on a cluster's shared filesystem
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param  # optional heavy dependency (the flm-grow[mlflow] extra)
        from mlflow.tracking import MlflowClient  # (with the above)

        self._metric, self._param = Metric, Param
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        experiment_id = (
            experiment.experiment_id if experiment is not None else self.client.create_experiment(cfg.experiment)
        )
        self.run_id = self.client.create_run(experiment_id, run_name=cfg.run_name or name).info.run_id
        params = [
            self._param(key, value if isinstance(value, str) else json.dumps(value))
            for key, value in flatten(config).items()
        ]
        for i in range(0, len(params), _MLFLOW_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + _MLFLOW_PARAMS_PER_BATCH])
        self.client.log_dict(self.run_id, config, "config.json")

    def _metrics(self, values: dict[str, Any], step: int) -> list:
        now = int(time.time() * 1000)
        return [
            self._metric(key, float(value), now, step)
            for key, value in values.items()
            if isinstance(value, (int, float))  # bools as 0/1; NaN and inf are kept (a diverging loss shows)
        ]

    def log(self, record: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, metrics=self._metrics(record, int(record[AXIS])))

    def event(self, name: str, fields: dict[str, Any], *, tokens: int) -> None:
        self.client.log_batch(
            self.run_id, metrics=self._metrics({f"{name}/{key}": value for key, value in fields.items()}, tokens)
        )
        self.client.log_dict(self.run_id, {"event": name, AXIS: tokens, **fields}, f"events/{name}-{tokens}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
