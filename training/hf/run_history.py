"""How an exported checkpoint came to be, read from what its run already recorded (for the model
card, :mod:`training.hf.model_card`): the stages it grew through, the tokens each trained, the
growth operators and the checks at each transition, the validation losses, the IQ scores of
``flm eval``, and the data it read.

Sources, none recomputed:

- the checkpoint's ``flm_checkpoint.json``: run config (model, data, ``output_dir``), step,
  samples consumed, and for a staged run ``stage`` / ``stage_name``;
- the run directory (the checkpoint config's ``output_dir``; a staged run's stages are the
  ``stage<i>-<name>/`` directories under its parent): ``stages.jsonl`` (each finished stage's
  model, steps and tokens), per stage ``grown/flm_checkpoint.json`` (the growth plan and samples
  consumed when the stage began), ``growth.json`` (the float64 reference check of the grown
  model), ``transition_check.json`` (the engine's check at the stage's first step),
  ``metrics.jsonl`` (``val_loss``) and ``eval.jsonl`` (``flm eval``'s records, ``eval_iq.watch``);
- each prepared dataset's ``manifest.json`` (fingerprint, documents, tokens), read now.

Contract: a record that is not there (a run directory not on this machine, a stage that did not
record, a checkpoint never evaluated) is ``None`` (or absent), never a substitute value; the
caller states it. Torn last lines of the JSONL files (a run killed while writing) are skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from training.checkpoint import is_checkpoint, read_meta
from training.config import ModelConfig
from training.config.data import DataConfig
from training.config_base import from_dict
from training.data.build import default_data_dir
from training.data.fsutil import read_json
from training.data.shards import MANIFEST_FILE
from training.model_size import total_params
from training.orchestration.stage_plans import GROWN_DIR

#: the files of a run directory read here, and who writes them
STAGES_FILE = "stages.jsonl"  # training.orchestration.stages, at each stage's end
GROWTH_FILE = "growth.json"  # training.orchestration.stages.grow_into
CHECK_FILE = "transition_check.json"  # training.orchestration.transition.check
METRICS_FILE = "metrics.jsonl"  # training.engine.metrics
EVAL_FILE = "eval.jsonl"  # eval_iq.watch (flm eval)


@dataclass(frozen=True)
class Validation:
    """A validation loss of ``metrics.jsonl``: at ``step`` of its stage, ``tokens`` seen by the run."""

    loss: float
    step: int
    tokens: Optional[int]


@dataclass(frozen=True)
class StageHistory:
    """One stage of the run, up to the exported checkpoint for the checkpoint's own stage."""

    index: int
    name: str
    dir: Path
    #: the stage's ``model:`` section (the grown model for a grown stage; empty: not recorded)
    model: dict[str, Any]
    #: parameters the stage trained (``training.model_size.total_params``: padded vocabulary); None:
    #: not recorded
    params: Optional[int]
    #: tokens trained in this stage (to the exported checkpoint), None when not recorded
    tokens: Optional[int]
    #: steps trained in this stage (to the exported checkpoint) and the stage's planned steps
    steps_done: Optional[int]
    steps: Optional[int]
    #: the ``growth`` record of the checkpoint the stage started from (plan, masks, exact, verify);
    #: None for a stage trained from scratch
    growth: Optional[dict[str, Any]]
    #: ``growth.json`` (float64 reference check) and ``transition_check.json`` (the engine's)
    reference_check: Optional[dict[str, Any]]
    engine_check: Optional[dict[str, Any]]
    #: the last validation loss at or before the stage's last step (the exported checkpoint's step)
    validation: Optional[Validation]
    #: ``flm eval``'s record of the stage's last checkpoint (scores or the reason it was skipped)
    evaluation: Optional[dict[str, Any]]
    #: the ``data:`` section the stage trained on, None when no record of the stage holds it
    data: Optional[dict[str, Any]]


@dataclass(frozen=True)
class RunHistory:
    name: str
    #: the run directory recorded in the checkpoint, and whether it is on this machine
    recorded_dir: Path
    found: bool
    staged: bool
    #: stages 0 .. the checkpoint's (one for a run without stages)
    stages: list[StageHistory]
    step: int
    tokens_seen: int

    @property
    def last(self) -> StageHistory:
        return self.stages[-1]


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset of a ``data:`` section, with what its ``manifest.json`` says (None: not found)."""

    path: Path
    weight: float
    manifest: Optional[dict[str, Any]]

    @property
    def fingerprint(self) -> Optional[str]:
        return None if self.manifest is None else self.manifest.get("fingerprint")

    @property
    def hub_dataset(self) -> Optional[str]:
        spec = ((self.manifest or {}).get("source") or {}).get("spec") or {}
        return spec.get("hub_dataset")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file ([] when absent); a torn line is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_history(src: Path, meta: dict[str, Any]) -> RunHistory:
    """The history of checkpoint ``src`` (its ``flm_checkpoint.json`` is ``meta``)."""
    cfg = meta["config"]
    stage_dir = Path(cfg["output_dir"]).expanduser()
    staged = meta.get("stage") is not None
    current = int(meta["stage"]) if staged else 0
    run_dir = stage_dir.parent if staged else stage_dir
    seq = int(cfg["model"]["seq_length"])
    consumed = int(meta.get("consumed_samples", 0))
    finished = {int(r["stage"]): r for r in read_jsonl(run_dir / STAGES_FILE)}  # a resumed stage: last wins
    stages = [_finished_stage(i, run_dir, finished.get(i)) for i in range(current)]
    name = str(cfg.get("name", ""))
    stages.append(_current_stage(current, meta, stage_dir, name.split("/")[-1] if staged else name, consumed))
    return RunHistory(
        name=name.split("/")[0] if staged else name,
        recorded_dir=run_dir,
        found=run_dir.is_dir(),
        staged=staged,
        stages=stages,
        step=int(meta["step"]),
        tokens_seen=consumed * seq,
    )


def _entry(stage_dir: Path) -> tuple[Optional[dict[str, Any]], Optional[dict[str, Any]]]:
    """(growth record, metadata) of the grown checkpoint a stage started from, if any."""
    grown = stage_dir / GROWN_DIR
    if not is_checkpoint(grown):
        return None, None
    meta = read_meta(grown)
    return meta.get("growth"), meta


def _finished_stage(index: int, run_dir: Path, record: Optional[dict[str, Any]]) -> StageHistory:
    """A stage before the checkpoint's: ``record`` is its ``stages.jsonl`` line (None: not recorded)."""
    if record is not None:
        stage_dir, name = Path(record["output_dir"]).expanduser(), str(record["name"])
    else:  # the stage did not record its end: its directory, if the run has one
        found = sorted(run_dir.glob(f"stage{index}-*"))
        stage_dir = found[0] if len(found) == 1 else run_dir / f"stage{index}-?"
        name = stage_dir.name.split("-", 1)[-1]
    growth, grown_meta = _entry(stage_dir)
    model = record["model"] if record is not None else (grown_meta or {}).get("config", {}).get("model")
    steps = None if record is None else int(record["steps"])
    # the next stage's grown checkpoint was written from this stage's final one: its config is this stage's
    nxt = sorted(run_dir.glob(f"stage{index + 1}-*"))
    next_meta = _entry(nxt[0])[1] if len(nxt) == 1 else None
    return StageHistory(
        index=index,
        name=name,
        dir=stage_dir,
        model=model or {},
        params=_params(model) if model else None,
        tokens=None if record is None else int(record["tokens"]),
        steps_done=steps,
        steps=steps,
        growth=growth,
        reference_check=read_json(stage_dir / GROWTH_FILE),
        engine_check=read_json(stage_dir / CHECK_FILE),
        validation=_validation(stage_dir, None),
        evaluation=_evaluation(stage_dir, None),
        data=None if next_meta is None else next_meta["config"].get("data"),
    )


def _current_stage(index: int, meta: dict[str, Any], stage_dir: Path, name: str, consumed: int) -> StageHistory:
    cfg = meta["config"]
    growth, grown_meta = _entry(stage_dir)
    if growth is None and meta.get("growth"):  # a checkpoint written by `flm grow` itself
        growth, grown_meta = meta["growth"], meta
    start = int(grown_meta.get("consumed_samples", 0)) if grown_meta is not None else 0
    step = int(meta["step"])
    return StageHistory(
        index=index,
        name=name,
        dir=stage_dir,
        model=cfg["model"],
        params=_params(cfg["model"]),
        tokens=(consumed - start) * int(cfg["model"]["seq_length"]),
        steps_done=step,
        steps=int(cfg["train"]["steps"]),
        growth=growth,
        reference_check=read_json(stage_dir / GROWTH_FILE),
        engine_check=read_json(stage_dir / CHECK_FILE),
        validation=_validation(stage_dir, step),
        evaluation=_evaluation(stage_dir, step),
        data=cfg.get("data"),
    )


def _params(model: dict[str, Any]) -> int:
    return total_params(from_dict(ModelConfig, model, "model"))


def _validation(stage_dir: Path, step: Optional[int]) -> Optional[Validation]:
    """The last ``val_loss`` of the stage at or before ``step`` (None: any step)."""
    found = None
    for rec in read_jsonl(stage_dir / METRICS_FILE):
        if rec.get("val_loss") is not None and (step is None or int(rec["step"]) <= step):
            found = Validation(float(rec["val_loss"]), int(rec["step"]), rec.get("tokens"))
    return found


def _evaluation(stage_dir: Path, step: Optional[int]) -> Optional[dict[str, Any]]:
    """``flm eval``'s last record of the stage's checkpoint at ``step`` (None: its final checkpoint).
    The stage's eval.jsonl holds only its own checkpoints, so the step identifies one."""
    found = None
    for rec in read_jsonl(stage_dir / EVAL_FILE):
        if (rec.get("final") if step is None else rec.get("step") == step) and ("iq" in rec or "skipped" in rec):
            found = rec
    return found


def datasets(data: dict[str, Any], vocab_size: int) -> list[DatasetRecord]:
    """The datasets a ``data:`` section reads, each with its manifest ([] for mock data). Relative
    paths are resolved against the current directory, as training does."""
    kind = data.get("kind", "mock")
    if kind == "prepared":
        entries = [(Path(d["path"]).expanduser(), float(d.get("weight", 1.0))) for d in data.get("datasets", [])]
    elif kind == "default":
        # where training.data.build.prepare_default_data caches the default corpus's shards
        root = default_data_dir(from_dict(DataConfig, data, "data"))
        entries = [(root / f"prepared-bpe-v{vocab_size}", 1.0)]
    else:
        return []
    return [DatasetRecord(path, weight, read_json(path / MANIFEST_FILE)) for path, weight in entries]
