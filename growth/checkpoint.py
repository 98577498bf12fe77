"""Grow a checkpoint: the transform behind ``flm grow`` and the stage transitions of ``flm train``.

``grow_checkpoint(src, dst, plan)`` reads a checkpoint saved under any TP/PP/DP layout as logical
tensors (``training.logical.read_logical``), grows every parameter with ``grow_tensor`` and every
Adam moment with ``grow_moment``, and writes a logical checkpoint at ``dst`` that loads under any
layout with ``flm train --init-from`` (weights, moments, Adam step, growth masks, consumed samples).
``dst`` is never overwritten and no partial ``dst`` is left on failure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from growth.operators import prepare_growth, grow_tensor
from growth.optimizer_state import grow_moment
from growth.plan import GrowthPlan, check_plan
from growth.verify import VerifyReport, verify
from training.checkpoint import CheckpointError, read_meta, resolve
from training.config import RunConfig
from training.config_base import from_dict, to_dict

#: |dlogit| <= VERIFY_ATOL + VERIFY_RTOL * max|logit| counts as function-preserving (float64 check)
VERIFY_ATOL = 1e-10
VERIFY_RTOL = 1e-10


@dataclass
class GrowReport:
    src: Path
    dst: Path
    exact: bool
    old_params: int
    new_params: int
    verify: Optional[VerifyReport]

    @property
    def preserved(self) -> Optional[bool]:
        if self.verify is None:
            return None
        return self.verify.within(VERIFY_ATOL, VERIFY_RTOL)

    def summary(self) -> str:
        lines = [f"grew {self.src} -> {self.dst}: {self.old_params:,} -> {self.new_params:,} parameters "
                 f"({'exact operators' if self.exact else 'NOT function-preserving (exact: false)'})"]
        if self.verify is not None:
            v = self.verify
            lines.append(f"verify (float64, masks at 0): max |dlogit| = {v.max_abs_dlogit:.3e} "
                         f"(max |logit| {v.max_abs_logit:.3e}), |dloss| = {v.abs_dloss:.3e} "
                         f"[{'preserved' if self.preserved else 'CHANGED'}]")
        return "\n".join(lines)


def verify_tokens(vocab_size: int, seq_length: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, min(seq_length, 64)), generator=gen)


def grow_checkpoint(src: str | Path, dst: str | Path, plan: GrowthPlan, *, run_verify: bool = True) -> GrowReport:
    """Grow checkpoint ``src`` into ``dst`` with ``plan`` (collective when distributed; rank 0 writes)."""
    from training.logical import read_logical, write_logical

    dst = Path(dst)
    if dst.exists():
        raise CheckpointError(f"refusing to overwrite {dst}; choose a new destination")
    src = resolve(src)
    meta = read_meta(src)
    run = from_dict(RunConfig, meta["config"])
    old_cfg = run.model
    new_cfg = check_plan(plan, old_cfg)
    params, moments = read_logical(src)
    g = prepare_growth(plan, old_cfg)
    new_params = {k: grow_tensor(g, k, v) for k, v in params.items()}
    new_moments = {
        m: {k: grow_moment(g, k, v, order) for k, v in moments[m].items()}
        for m, order in (("exp_avg", 1), ("exp_avg_sq", 2))
    }
    report = None
    if run_verify:
        tokens = verify_tokens(old_cfg.vocab_size, old_cfg.seq_length, seed=plan.seed)
        as64 = lambda state: {k: v.double() for k, v in state.items()}  # noqa: E731
        report = verify(old_cfg, as64(params), new_cfg, as64(new_params), g.masks, tokens)
    new_run = dataclasses.replace(run, model=new_cfg)
    growth_meta = {
        "plan": to_dict(plan),
        "masks": g.masks.to_dict() if g.masks is not None else None,
        "exact": g.exact,
        "source": str(src),
        "verify": dataclasses.asdict(report) if report is not None else None,
    }
    write_logical(dst, new_params, {
        "config": to_dict(new_run), "step": 0, "consumed_samples": int(meta.get("consumed_samples", 0)),
        "adam_step": int(meta.get("adam_step", meta.get("step", 0))), "growth": growth_meta,
    }, new_moments)
    count = lambda state: sum(v.numel() for v in state.values())  # noqa: E731
    return GrowReport(src=src, dst=dst, exact=g.exact, old_params=count(params), new_params=count(new_params),
                      verify=report)
