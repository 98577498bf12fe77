"""Grow a checkpoint: the transform behind ``flm grow`` and the stage transitions of ``flm train``.

``grow_checkpoint(src, dst, plan)`` (collective when a process group is initialized, e.g. the
trainer's in a staged run; a plain process needs none) reads a checkpoint saved under any TP/PP/DP layout and writes a
logical checkpoint at ``dst`` that loads under any layout with ``flm train --init-from`` (weights,
Adam moments, Adam step, growth masks, consumed samples and data position). A bf16 run's fp32 master weights
(``optimizer.state.fp32_param.*``) grow with the same operator as the weights, in fp32, so growth
does not round them to bf16.

It streams: every grown tensor is declared to the writer (``training.checkpoint.dcp_io``) with its shape and
cut into chunks (one layer per chunk for ``decoder.layers.*``); a chunk is computed only when the
writer asks for it, from the old layer it grows from (``growth.operators.grow_layer`` /
``growth.optimizer_state.grow_moment_layer``), which is read from ``src`` on demand. Peak memory is
about one old layer plus one grown layer of the largest tensor (plus the embedding/output matrix,
which is one chunk), never the model. When several processes run it (a staged run under torchrun),
the chunks are spread over them and written in parallel.

``verify`` (on by default) then runs a fixed batch through the old model read from ``src`` and the
grown model read back from what was written (float64, masks at 0, one layer in memory at a time),
each rank computing its share of the layers (``training.orchestration.reference_check``). If the plan's operators are exact and the logits differ, the grow fails
(``GrowthVerificationError``) and nothing is left at ``dst``. ``dst`` is never overwritten and no
partial ``dst`` is left on any failure.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from growth.errors import GrowthError
from growth.operators import Growth, grow_layer, grow_tensor, prepare_growth
from growth.optimizer_state import grow_moment, grow_moment_layer
from growth.plan import GrowthPlan, load_plan
from growth.roles import logical_keys, readout_key, role_of
from growth.shape import ModelShape
from growth.verify import VerifyReport
from training.checkpoint import CheckpointError, read_meta, resolve
from training.checkpoint.dcp_io import ChunkedTensor, TensorReader
from training.checkpoint.logical import master_key, moment_key, stored_master_key, write_logical_chunks
from training.config import ModelConfig, RunConfig
from training.config_base import ConfigError, from_dict, read_yaml, to_dict
from training.orchestration.reference_check import Side, verify_spread

#: |dlogit| <= tol * (1 + max|logit|) counts as function-preserving. The check computes in float64, so
#: the only difference left by an exact operator is the rounding of grown values that are not copies
#: (zero-init RMSNorm gains rescaled by sqrt(H/H'), clone's 1/k) to the checkpoint's dtype.
VERIFY_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
MOMENTS = (("exp_avg", 1), ("exp_avg_sq", 2))


class GrowthVerificationError(GrowthError):
    """The plan's operators are exact, but the grown model does not compute what the old one did
    (a bug to report: exit status 1)."""

    exit_code = 1

    def __init__(self, report: VerifyReport, tolerance: float, dst: Path) -> None:
        super().__init__(
            f"the grown model does not compute what the old one did: max |dlogit| {report.max_abs_dlogit:.3e} "
            f"(max |logit| {report.max_abs_logit:.3e}, tolerance {tolerance:g} x (1 + max|logit|)), |dloss| "
            f"{report.abs_dloss:.3e}; the plan's operators are exact, so this is a bug — please report it with "
            f"the plan and the source checkpoint's config; nothing was written to {dst}"
        )
        self.report = report


def verify_tolerance(dtype: torch.dtype) -> float:
    """The exactness tolerance (relative to 1 + max|logit|) for weights stored in ``dtype``."""
    return VERIFY_TOLERANCE.get(dtype, VERIFY_TOLERANCE[torch.bfloat16])


@dataclass
class GrowReport:
    src: Path
    dst: Path
    exact: bool
    old_params: int
    new_params: int
    verify: Optional[VerifyReport]
    #: |dlogit| <= tolerance * (1 + max|logit|) is "preserved" (see VERIFY_TOLERANCE)
    tolerance: float = VERIFY_TOLERANCE[torch.float64]

    @property
    def preserved(self) -> Optional[bool]:
        if self.verify is None:
            return None
        return self.verify.within(self.tolerance, self.tolerance)

    def summary(self) -> str:
        lines = [
            f"grew {self.src} -> {self.dst}: {self.old_params:,} -> {self.new_params:,} parameters "
            f"({'exact operators' if self.exact else 'NOT function-preserving (exact: false)'})"
        ]
        if self.verify is not None:
            v = self.verify
            lines.append(
                f"verify (float64, masks at 0): max |dlogit| = {v.max_abs_dlogit:.3e} "
                f"(max |logit| {v.max_abs_logit:.3e}; tolerance {self.tolerance:g} x (1 + max|logit|)), "
                f"|dloss| = {v.abs_dloss:.3e} [{'preserved' if self.preserved else 'CHANGED'}]"
            )
        return "\n".join(lines)


def verify_tokens(vocab_size: int, seq_length: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, min(seq_length, 64)), generator=gen)


@dataclass(frozen=True)
class CheckpointWeights:
    """``growth.verify.Weights`` read from a checkpoint on demand (one layer at a time)."""

    reader: TensorReader
    cfg: object

    def tensor(self, key: str) -> Optional[torch.Tensor]:
        return self.reader.read(key) if key in self.reader else None

    def layer(self, index: int) -> dict[str, torch.Tensor]:
        return {k: self.reader.read(k, index, 1)[0] for k in logical_keys(self.cfg) if role_of(k).layered}


class _OldTensors:
    """The old checkpoint's tensors as the grown chunks need them: a per-layer tensor stored one
    layer per chunk (training checkpoints, checkpoints this module writes) is read a layer at a time;
    one stored in bigger chunks (logical checkpoints of older versions) is read whole once and kept
    until another such tensor is needed. Thread-safe (the writer's threads call it concurrently)."""

    def __init__(self, reader: TensorReader) -> None:
        self.reader = reader
        self._whole: tuple[Optional[str], Optional[torch.Tensor]] = (None, None)

    def layer(self, key: str, index: int) -> torch.Tensor:
        if self.reader.stored_rows(key) <= 1:
            return self.reader.read(key, index, 1)[0]
        cached = self._whole  # one read of the shared slot: another thread may replace it meanwhile
        if cached[0] != key:
            cached = (key, self.reader.read(key))
            self._whole = cached
        return cached[1][index]


def _check_source(reader: TensorReader, g: Growth, src: Path) -> list[str]:
    """The parameter keys to grow; GrowthError naming what does not fit the plan's old model."""
    keys = logical_keys(g.old_cfg)
    stored = [k for k in reader.keys() if not k.startswith("optimizer.") and not k.endswith("_extra_state")]
    missing = [k for k in keys if k not in reader]
    unknown = sorted(set(stored) - set(keys))
    if missing or unknown:
        raise GrowthError(
            f"{src} does not hold the model its config describes: missing {missing[:5]}, unexpected {unknown[:5]}"
        )
    for key in keys:
        for name in [key, stored_master_key(reader, reader.dtype, key)] + [moment_key(m, key) for m, _ in MOMENTS]:
            if name is None or name not in reader:
                continue
            want = g.old_shape(key)
            if reader.shape(name) != want:
                raise GrowthError(f"{src}: {name} has shape {reader.shape(name)}, the plan's old model {want}")
    return keys


def _entries(g: Growth, reader: TensorReader, keys: list[str]) -> list[ChunkedTensor]:
    """One ``ChunkedTensor`` per grown parameter and moment; chunks are produced on demand."""
    old = _OldTensors(reader)

    def source(name: str, j: int) -> Optional[torch.Tensor]:
        """The old layer that new layer ``j`` of tensor ``name`` grows from (None: a fresh layer)."""
        s = g.layers[j].source
        return None if s is None else old.layer(name, s)

    entries = []
    for key in keys:
        dtype, layered, new_shape = reader.dtype(key), role_of(key).layered, g.new_shape(key)
        if layered:
            entries.append(
                ChunkedTensor(
                    key,
                    new_shape,
                    dtype,
                    rows=1,
                    produce=lambda j, key=key, dtype=dtype: grow_layer(g, key, j, source(key, j), dtype=dtype)[None],
                )
            )
        else:
            entries.append(
                ChunkedTensor(key, new_shape, dtype, produce=lambda _, key=key: grow_tensor(g, key, reader.read(key)))
            )
        master = stored_master_key(reader, reader.dtype, key)
        if master is not None:  # a bf16 run's fp32 master weights grow exactly as the weights do, in fp32
            mdtype = reader.dtype(master)
            if layered:
                entries.append(
                    ChunkedTensor(
                        master_key(key),
                        new_shape,
                        mdtype,
                        rows=1,
                        produce=lambda j, key=key, master=master, mdtype=mdtype: grow_layer(
                            g, key, j, source(master, j), dtype=mdtype
                        )[None],
                    )
                )
            else:
                entries.append(
                    ChunkedTensor(
                        master_key(key),
                        new_shape,
                        mdtype,
                        produce=lambda _, key=key, master=master: grow_tensor(g, key, reader.read(master)),
                    )
                )
        for m, order in MOMENTS:
            name = moment_key(m, key)
            if name not in reader:
                continue
            mdtype = reader.dtype(name)
            if layered:
                produce = lambda j, key=key, name=name, order=order, mdtype=mdtype: grow_moment_layer(
                    g, key, j, None if g.layers[j].is_new else source(name, j), order, dtype=mdtype
                )[None]
                entries.append(ChunkedTensor(name, new_shape, mdtype, rows=1, produce=produce))
            else:
                entries.append(
                    ChunkedTensor(
                        name,
                        new_shape,
                        mdtype,
                        produce=lambda _, key=key, name=name, order=order: grow_moment(
                            g, key, reader.read(name), order
                        ),
                    )
                )
    return entries


def _side(cfg, reader: TensorReader, shape, masks) -> Side:
    """One model of the float64 check, its weights read from ``reader``; costs from ``shape(key)``."""
    keys = logical_keys(cfg)
    layer = sum(math.prod(shape(k)[1:]) for k in keys if role_of(k).layered)
    return Side(
        cfg, CheckpointWeights(reader, cfg), masks, float(max(layer, 1)), float(math.prod(shape(readout_key(cfg))))
    )


def _verify(g: Growth, plan: GrowthPlan, old: TensorReader, written: Path) -> VerifyReport:
    """The float64 check, its layers spread over the ranks (``reference_check.verify_spread``); every
    rank gets the report."""
    tokens = verify_tokens(g.old_cfg.vocab_size, g.old_cfg.seq_length, seed=plan.seed)
    masks = g.masks.values(0, dtype=torch.float64) if g.masks is not None else None
    return verify_spread(
        _side(g.old_cfg, old, g.old_shape, None), _side(g.new_cfg, TensorReader(written), g.new_shape, masks), tokens
    )


def grow_checkpoint(src: str | Path, dst: str | Path, plan: GrowthPlan, *, run_verify: bool = True) -> GrowReport:
    """Grow checkpoint ``src`` into ``dst`` with ``plan`` (collective when distributed).

    Raises ``CheckpointError`` (paths), ``ConfigError`` (plan), ``GrowthError`` (tensors that do not
    fit the plan) before anything is written, and ``GrowthVerificationError`` when exact operators
    did not preserve the function; ``dst`` exists afterwards only on success.
    """
    dst = Path(dst)
    if dst.exists():
        raise CheckpointError(f"refusing to overwrite {dst}; choose a new destination")
    src = resolve(src)
    meta = read_meta(src)
    run = from_dict(RunConfig, meta["config"])
    g = prepare_growth(plan, run.model)
    reader = TensorReader(src)
    keys = _check_source(reader, g, src)
    entries = _entries(g, reader, keys)
    has_moments = any(e.key.startswith("optimizer.") for e in entries)
    tolerance = max(verify_tolerance(reader.dtype(k)) for k in keys)
    result: dict[str, Optional[VerifyReport]] = {"verify": None}

    def finish(written: Path) -> dict:
        if run_verify:
            report = _verify(g, plan, reader, written)
            result["verify"] = report
            if g.exact and not report.within(tolerance, tolerance):
                raise GrowthVerificationError(report, tolerance, dst)
        return {
            "config": to_dict(dataclasses.replace(run, model=g.new_cfg)),
            "step": 0,
            "consumed_samples": int(meta.get("consumed_samples", 0)),
            **({"data_position": meta["data_position"]} if meta.get("data_position") else {}),
            "adam_step": int(meta.get("adam_step", meta.get("step", 0))),
            "growth": {
                "plan": to_dict(plan),
                "masks": g.masks.to_dict() if g.masks is not None else None,
                "exact": g.exact,
                "source": str(src),
                "verify": dataclasses.asdict(result["verify"]) if result["verify"] is not None else None,
            },
        }

    write_logical_chunks(dst, entries, finish, has_moments=has_moments)
    count = lambda shapes: sum(math.prod(s) for s in shapes)  # noqa: E731
    return GrowReport(
        src=src,
        dst=dst,
        exact=g.exact,
        old_params=count(reader.shape(k) for k in keys),
        new_params=count(g.new_shape(k) for k in keys),
        verify=result["verify"],
        tolerance=tolerance,
    )


def grow_from_files(src: Path, dst: Path, plan_path: Path, *, verify: bool) -> GrowReport:
    """``flm grow``: the plan file (its ``old`` shape read from ``src`` when omitted) applied to ``src``.
    A plan mistake is a ``ConfigError`` naming the plan file."""
    data = read_yaml(plan_path)
    if "old" not in data:
        meta = read_meta(resolve(src))
        cfg = from_dict(ModelConfig, meta["config"]["model"])
        old = dataclasses.asdict(ModelShape.from_model_config(cfg, meta["layout"]["tp"]))
        data = {"old": old, **data}
    try:
        return grow_checkpoint(src, dst, load_plan(data), run_verify=verify)
    except ConfigError as err:
        if err.source is None:
            raise ConfigError(err.key, err.message, source=str(plan_path)) from None
        raise
