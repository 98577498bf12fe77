"""The engine's check of a growth transition: the same batch, the old model under the old layout and
the grown model under the new one, in the run's precision, on every rank.

The float64 reference check of ``training.orchestration.grow`` proves exactness on logical tensors;
its layers are spread over the ranks (``reference_check``), but its float64 forward passes them in
order and holds a layer in float64: at FLM-101B's 51B -> 101B step a layer is ~1.3B parameters
(10 GB) and the chain would take hours. This check
costs one forward pass of one global batch per side, spread over the ranks like training itself,
and proves something the reference cannot: the model *as the engine runs it* (the new layout's
sharding, sequence parallelism, pipeline schedule, mixed precision, masks applied by the engine's
modules) computes what the old stage's engine computed.

Protocol (``training.orchestration.stages``): when stage ``i - 1`` has trained, every rank computes
the loss of the verification batch (``reference_loss``) and rank 0 writes it to ``<stage i - 1
dir>/transition_reference.json``; when stage ``i`` starts from its grown checkpoint, every rank
computes the same batch's loss (``check``) and the two must agree within the tolerance of the run's
precision (``ENGINE_TOLERANCE``), else ``TransitionCheckError`` (exit 1) before the first step. The
result goes to ``<stage i dir>/transition_check.json``. The verification batch is
``MockSource(vocab, seq_length, VERIFY_SEED)``'s first global batch, the same samples under any
layout (sample ``i`` depends on its index only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from growth.errors import GrowthError
from training.data.source import MockSource
from training.engine.trainer_base import BaseTrainer, use_bf16

VERIFY_SEED = 7919
REFERENCE_FILE = "transition_reference.json"
CHECK_FILE = "transition_check.json"

#: |loss_new - loss_old| <= tol * loss_old for an exact transition, by the precision the engine
#: computes in. fp32: the two sides differ only in reduction order (another layout splits the sums
#: differently); measured 0.0 on the tiny staged run's DP2 -> TP2 transition. bf16: activations are
#: rounded to 8 mantissa bits in another order and the grown weights are the fp32 masters rounded
#: anew; measured 6.4e-5 there (docs/growth.md), so 5e-3 leaves ~80x room for deeper models while a
#: broken operator (a percent-level change of the loss) still fails.
ENGINE_TOLERANCE = {"fp32": 1e-5, "bf16": 5e-3}


class TransitionCheckError(GrowthError):
    """An exact growth transition changed what the engine computes (a bug to report: exit status 1)."""

    exit_code = 1


@dataclass(frozen=True)
class Reference:
    """The old model's loss on the verification batch, as its engine computed it."""

    loss: float
    precision: str
    layout: str
    samples: int


def precision_of(trainer: BaseTrainer) -> str:
    return "bf16" if use_bf16(trainer.cfg.train.precision) else "fp32"


def _layout(trainer: BaseTrainer) -> str:
    p = trainer.cfg.parallel
    return f"TP{p.tp} PP{p.pp} DP{trainer.layout.dp}" + (" SP" if p.sequence_parallel else "")


def verification_loss(trainer: BaseTrainer) -> float:
    """The loss of the verification batch under ``trainer``'s layout and precision (collective; the
    same value on every rank)."""
    cfg = trainer.cfg
    source = MockSource(cfg.model.vocab_size, cfg.model.seq_length, VERIFY_SEED)
    return trainer.loss_on(source, batches=1)


def record_reference(trainer: BaseTrainer, stage_dir: Path, rank0: bool) -> Reference:
    """Compute the old model's reference (collective) and write it to ``stage_dir`` (rank 0)."""
    ref = Reference(
        verification_loss(trainer), precision_of(trainer), _layout(trainer), trainer.cfg.train.global_batch_size
    )
    if rank0:
        stage_dir.mkdir(parents=True, exist_ok=True)
        tmp = stage_dir / (REFERENCE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(ref), indent=2) + "\n")
        tmp.replace(stage_dir / REFERENCE_FILE)
    return ref


def read_reference(stage_dir: Path) -> Optional[Reference]:
    path = stage_dir / REFERENCE_FILE
    return Reference(**json.loads(path.read_text())) if path.is_file() else None


def check(trainer: BaseTrainer, reference: Reference, *, exact: bool, stage_dir: Path, rank0: bool) -> dict:
    """Compare the grown model's loss on the verification batch with ``reference`` (collective).
    Raises ``TransitionCheckError`` when ``exact`` and they differ by more than the tolerance of the
    coarser of the two precisions; returns (and rank 0 writes) the record."""
    loss = verification_loss(trainer)
    precision = precision_of(trainer)
    coarse = "bf16" if "bf16" in (precision, reference.precision) else "fp32"
    tolerance = ENGINE_TOLERANCE[coarse]
    rel = abs(loss - reference.loss) / max(abs(reference.loss), 1e-12)
    record = {
        "old_loss": reference.loss,
        "old_layout": reference.layout,
        "old_precision": reference.precision,
        "new_loss": loss,
        "new_layout": _layout(trainer),
        "new_precision": precision,
        "rel_dloss": rel,
        "tolerance": tolerance,
        "exact": exact,
        "preserved": rel <= tolerance,
    }
    if rank0:
        (stage_dir / CHECK_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if exact and rel > tolerance:
        raise TransitionCheckError(
            f"the grown model under {record['new_layout']} ({precision}) computes loss {loss:.6g} on the "
            f"verification batch, the old one under {reference.layout} ({reference.precision}) {reference.loss:.6g}: "
            f"relative difference {rel:.2e} > {tolerance:g}; the plan's operators are exact, so this is a bug — "
            f"please report it with the run config (record: {stage_dir / CHECK_FILE})"
        )
    return record
