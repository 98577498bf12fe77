"""Reading what the experiment trackers and the profiler wrote under a run directory (shared by
``tests/training/engine/test_tracking.py``, ``.../loop/test_loop_profiler.py`` and
``tests/training/orchestration/test_tracked_run.py``)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any


def profiled_steps(trace_dir: Path) -> list[list[int]]:
    """The ``ProfilerStep#N`` markers of every trace file in ``trace_dir`` (one list per file)."""
    out = []
    for path in sorted(trace_dir.glob("*.pt.trace.json")):
        events = json.loads(path.read_text())["traceEvents"]
        names = {e["name"] for e in events if str(e.get("name", "")).startswith("ProfilerStep#")}
        out.append(sorted(int(n.split("#")[1]) for n in names))
    return out


def wandb_records(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The history rows, the config and the run ids of the offline W&B runs under ``run_dir``, from
    their ``.wandb`` transaction logs (LevelDB log format: 7-byte file header, 32 KiB blocks of
    chunks with a 7-byte header each; every record a ``wandb_internal_pb2.Record``)."""
    from wandb.proto import wandb_internal_pb2 as pb  # optional dependency: only tests that have wandb call this

    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    ids = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        raw, pos, chunk, payloads = path.read_bytes(), 7, b"", []
        while pos + 7 <= len(raw):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
            if length == 0 and kind == 0:  # block padding
                pos += left
                continue
            chunk += raw[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # FULL, LAST
                payloads.append(chunk)
                chunk = b""
        for data in payloads:
            record = pb.Record()
            record.ParseFromString(data)
            which = record.WhichOneof("record_type")
            if which == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                rows.append({k: v for k, v in row.items() if not k.startswith("_")})
            elif which == "run":
                ids.append(record.run.run_id)
                config.update(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.run.config.update}
                )
            elif which == "config":
                config.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.config.update})
    config.pop("_wandb", None)
    return rows, {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in config.items()}, ids


def mlflow_run(run_dir: Path):
    """The MLflow client of the file store under ``run_dir`` and its (only) run."""
    from mlflow.tracking import MlflowClient  # optional dependency: only tests that have mlflow call this

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # as the tracker sets it in the training process

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "flm-grow"]
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
