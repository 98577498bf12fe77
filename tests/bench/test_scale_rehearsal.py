"""``bench/scale_rehearsal.py``'s arithmetic, in-process: per-rank rows summarised, the 1/world ratio,
the least-squares fit, the extrapolation to a stage and the planner's numbers it reads (the
multi-process measurement itself is the benchmark's, recorded in docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from bench.scale_rehearsal import (
    DEFAULT_PHASES,
    SPREAD_PHASES,
    Fit,
    StageScale,
    extrapolate,
    fit,
    fits,
    inflation,
    scaling,
    stage_scales,
    summarize,
    verdicts,
    worst,
)
from tests.helpers import REPO


def _rows(phase, world, cpus, work=1e6):
    return [
        {"phase": phase, "size": "s", "world": world, "rank": r, "work": work, "cpu": c, "wall": 2 * c}
        for r, c in enumerate(cpus)
    ]


def test_summary_ratio_and_wait_share():
    rows = _rows("save", 1, [8.0]) + _rows("save", 2, [4.0, 4.0]) + _rows("save", 4, [8.0, 0.0, 0.0, 0.0])
    stats = summarize(rows)
    assert [(s.world, s.slowest_cpu, s.mean_cpu, s.slowest_wall) for s in stats] == [
        (1, 8.0, 8.0, 16.0),
        (2, 4.0, 4.0, 8.0),
        (4, 8.0, 2.0, 16.0),
    ]
    # balanced halves: nobody waits; rank 0 alone on 4 ranks: the others wait 3/4 of its time
    assert [s.wait_share for s in stats] == [0.0, 0.0, 0.75]
    assert scaling(stats) == {("save", "s", 2): 1.0, ("save", "s", 4): 4.0}
    # rank 0 alone did all the work at 4 ranks: no work added, all of it serial
    assert inflation(stats) == {("save", "s", 2): 1.0, ("save", "s", 4): 1.0}
    assert verdicts(stats, "s") == [
        "save at s: x1/w 2: 1.00, 4: 4.00 -> DOES NOT fall as 1/world (largest wait share 0.75)"
    ]
    assert verdicts(summarize(rows[:3]), "s") == [
        "save at s: x1/w 2: 1.00 -> falls as 1/world (largest wait share 0.00)"
    ]
    with pytest.raises(ValueError, match="1 rank rows"):
        summarize(_rows("save", 2, [1.0]))


def test_fit_recovers_a_line_and_fits_per_phase_use_work_per_rank():
    f = fit([(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)])
    assert f.a == pytest.approx(1.0) and f.b == pytest.approx(2.0) and f(10.0) == pytest.approx(21.0)
    assert fit([(2.0, 4.0), (2.0, 6.0)]) == Fit(0.0, 2.5)  # one x: through the origin
    # t = 0.5 + 1e-6 x work/world, measured at two sizes and two worlds
    rows = []
    for work in (1e6, 4e6):
        for world in (1, 2):
            rows += _rows("grow", world, [0.5 + 1e-6 * work / world] * world, work=work)
    rows = [dict(r, size=str(r["work"])) for r in rows]
    g = fits(summarize(rows))["grow"]
    assert g.a == pytest.approx(0.5) and g.b == pytest.approx(1e-6)


def test_extrapolation_adds_fitted_cpu_to_disk_time_at_the_stated_bandwidth():
    st = StageScale(
        name="x",
        params=100e9,
        old_params=50e9,
        gpus=192,
        nodes=24,
        tp_pp=16,
        ckpt_bytes=1.4e12,
        old_ckpt_bytes=0.7e12,
        save_disk_s=390.0,
        load_disk_s=380.0,
        forward_s=20.0,
        old_forward_s=10.0,
    )
    f = {p: Fit(1.0, 1e-9) for p in ("save", "load", "grow", "ref64")}
    e = extrapolate(f, st, write_gbps=1.0, read_gbps=2.0)
    per_tp_pp = 1.4e12 / 16 * 1e-9 + 1.0
    per_gpu = 1.4e12 / 192 * 1e-9 + 1.0
    assert e["save"] == pytest.approx(390.0 + per_tp_pp)
    assert e["load"] == pytest.approx(380.0 + per_tp_pp)
    # every node writes 1/24 of 1.4 TB at 1 GB/s and hashes it at 2 GB/s
    assert e["save_spread"] == pytest.approx(1.4e12 / 24 / 1e9 * 1.5 + per_gpu)
    assert e["load_spread"] == pytest.approx(2 * 1.4e12 / 24 / 2e9 + per_gpu)
    assert e["grow"] == pytest.approx(0.7e12 / 24 / 2e9 + 1.4e12 / 24 / 1e9 + 1.0 + 1e-9 * 100e9 / 192)
    assert e["engine"] == 30.0
    assert e["ref64"] == pytest.approx(1.0 + 1e-9 * 150e9 / 192)
    assert e["ref64_wall"] == pytest.approx((1.0 + 1e-9 * 150e9) / 2)
    assert worst(e, DEFAULT_PHASES) == ("save", e["save"])
    assert worst(e, SPREAD_PHASES) == ("save_spread", e["save_spread"])
    first = extrapolate(f, StageScale(**{**st.__dict__, "old_params": 0.0}), 1.0, 2.0)
    assert "grow" not in first and "engine" not in first and "ref64" not in first


def test_stage_numbers_are_the_planners():
    stages = stage_scales(REPO / "configs" / "runs" / "flm101b.yaml", 192, "a800", 1.0, 2.0)
    assert [s.name for s in stages] == ["16b", "51b", "101b"]
    last = stages[-1]
    assert (last.gpus, last.nodes, last.tp_pp) == (192, 24, 16)
    assert last.ckpt_bytes == pytest.approx(14 * last.params, rel=1e-3)  # bf16 + fp32 master + Adam m, v
    assert last.old_params == stages[1].params and stages[0].old_params == 0.0
    assert last.old_forward_s == stages[1].forward_s > 0
    assert last.save_disk_s > 0 and last.load_disk_s > 0
