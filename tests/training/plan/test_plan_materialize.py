"""``flm plan --materialize``: meta-device builds per rank equal the analytic counts and real builds.

The fast tests build small layouts in this process under the simulated (fake-backend) world and
check every rank against ``training.plan.params``; the slow test builds the same layouts for real
in two gloo processes and checks the simulated counts against them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.helpers import REPO
from training.config import load_run_config
from training.plan.materialize import build_rank, materialize_stage

TINY = REPO / "configs" / "runs" / "tiny.yaml"

LAYOUTS = {
    "tp2": ["parallel.tp=2"],
    "pp2-tied": ["parallel.pp=2"],
    "pp2-untied": ["parallel.pp=2", "model.tie_embeddings=false"],
    "tp2-pp2-vpp2": [
        "parallel.tp=2",
        "parallel.pp=2",
        "parallel.virtual_pp=2",
        "model.num_layers=4",
        "train.global_batch_size=16",
    ],
    "tp2-gqa-swiglu-rms-nobias": [
        "parallel.tp=2",
        "model.num_query_groups=2",
        "model.activation=swiglu",
        "model.normalization=RMSNorm",
        "model.bias=false",
        "model.vocab_size=500",
    ],
    "tp4-sp-pp2-tied": ["parallel.tp=4", "parallel.pp=2", "parallel.sequence_parallel=true"],
}


@pytest.fixture(autouse=True)
def no_process_group():
    """Earlier in-process tests (trainers at world size 1) may have left a process group behind;
    materialize simulates its own, so start each test without one (trainers re-create theirs)."""
    from training.engine.parallel import teardown

    teardown()
    yield


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_meta_build_matches_analytic_counts(name):
    cfg = load_run_config(TINY, LAYOUTS[name])
    stage = materialize_stage(name, cfg.model, cfg.parallel)
    assert len(stage.built) == cfg.parallel.tp * cfg.parallel.pp
    assert stage.mismatches() == []
    assert all(b.on_meta for b in stage.built)
    assert not dist.is_initialized(), "the simulated world must be torn down"


def test_tied_copy_on_last_pipeline_rank_is_counted():
    cfg = load_run_config(TINY, ["parallel.pp=2"])
    last = build_rank(cfg.model, cfg.parallel, 0, 1)
    untied = load_run_config(TINY, ["parallel.pp=2", "model.tie_embeddings=false"])
    assert last.params == build_rank(untied.model, untied.parallel, 0, 1).params


def test_refuses_inside_an_initialised_process_group(tmp_path):
    cfg = load_run_config(TINY, ["parallel.tp=2"])
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'pg'}")
    try:
        with pytest.raises(RuntimeError, match="already initialised"):
            build_rank(cfg.model, cfg.parallel, 0, 0)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_flm101b_materializes_without_allocating():
    """The 192-GPU config: every (tp, pp) rank of every stage built in a child process whose peak
    RSS stays far below one rank's bf16 weights (12 GiB for the 101B stage)."""
    code = (
        "import json, resource, sys\n"
        "from training.cli import main\n"
        "rc = main(['plan', 'configs/runs/flm101b.yaml', '--materialize', '--json'])\n"
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    mat = {m["stage"]: m for m in doc["materialized"]}
    assert [len(mat[s]["ranks"]) for s in ("16b", "51b", "101b")] == [2, 8, 16]
    assert all(not m["mismatches"] for m in mat.values())
    ranks = {(r["tp_rank"], r["pp_rank"]): r["params"] for r in mat["101b"]["ranks"]}
    assert ranks[(3, 1)] == 20 * 314_652_160  # 20 layers of h=10240, f=40960 over TP4
    assert ranks[(0, 0)] == 20 * 314_652_160 + 100_352 // 4 * 10_240  # + the embedding shard
    maxrss_kib = int(proc.stderr.rsplit("MAXRSS", 1)[1].split()[0])
    assert maxrss_kib < 2 * 1024 * 1024, f"peak RSS {maxrss_kib / 1024:.0f} MiB: something was allocated"


@pytest.mark.slow
def test_meta_counts_equal_real_two_process_builds(tmp_path):
    layouts = {"tp2": LAYOUTS["tp2"], "pp2-tied": LAYOUTS["pp2-tied"], "pp2-untied": LAYOUTS["pp2-untied"]}
    worker = REPO / "tests" / "training" / "plan" / "workers" / "count_params.py"
    args = [f"{name}={','.join(o)}" for name, o in layouts.items()]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(worker),
        str(tmp_path),
        *args,
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, overrides in layouts.items():
        cfg = load_run_config(TINY, overrides)
        for rank in range(2):
            real = json.loads((tmp_path / f"{name}.rank{rank}.json").read_text())
            meta = build_rank(cfg.model, cfg.parallel, real["tp_rank"], real["pp_rank"])
            assert list(meta.chunk_params) == real["chunk_params"], (name, rank)
