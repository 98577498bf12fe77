"""Faults injected on purpose, through the real ``flm`` CLI (docs/faults.md): damaged checkpoints
(flipped bytes, truncation, empty shard, corrupt metadata, missing ``.metadata``, dangling
``latest``), a used output_dir, a concurrent second job, SIGTERM during a step and during a save,
the ``--nproc 2`` launcher killed, a NaN storm, a loss spike rolled back (and its rollback count
carried over a resume), a full disk.

One uninterrupted reference run per module (6 steps, checkpoints at 2, 4, 6); each test works on a
copy of it or on a run of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, child_env, flm, losses, processes_mentioning, read_metrics
from training.checkpoint.lock import RunLock
from training.cli import main as flm_main

TINY = str(REPO / "configs" / "runs" / "tiny.yaml")
COMMON = [
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "train.eval_interval=1000",
    "checkpoint.save_interval=2",
    "checkpoint.keep_last=5",
]
STEPS = 6
PREEMPTED = 75

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "ref"
    flm("train", TINY, f"train.steps={STEPS}", f"output_dir={run}", *COMMON)
    return run


def _copy(reference: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}"


def _shard(ckpt: Path) -> Path:
    return sorted(ckpt.glob("*.distcp"))[0]


def _flip(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(16)
        f.seek(path.stat().st_size // 2)
        f.write(bytes(x ^ 0xFF for x in b))


DAMAGE = {
    "flipped-bytes": (lambda c: _flip(_shard(c)), "is damaged"),
    "truncated-shard": (lambda c: os.truncate(_shard(c), _shard(c).stat().st_size // 2), "is truncated"),
    "empty-shard": (lambda c: os.truncate(_shard(c), 0), "is empty"),
    "corrupt-meta": (lambda c: (c / "flm_checkpoint.json").write_text('{"step": 6, "con'), "is corrupt"),
    "missing-metadata": (lambda c: (c / ".metadata").unlink(), "file .metadata is missing"),
}


def _one_line_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("flm ") and "error:" in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def _ckpt_verify(capsys, *args: str) -> subprocess.CompletedProcess:
    """``flm ckpt verify ARGS`` through the CLI's main in this process (hashing files needs no
    fresh interpreter: one would only add its start-up)."""
    capsys.readouterr()
    code = flm_main(["ckpt", "verify", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["flm", "ckpt", "verify", *args], code, out, err)


def test_manifest_recorded_and_flm_ckpt_verify(reference, tmp_path, capsys):
    meta = json.loads((_ckpt(reference, 6) / "flm_checkpoint.json").read_text())
    assert meta["hash_algo"] in ("xxh3_128", "sha256")
    assert {".metadata", "common.pt"} <= set(meta["files"])
    assert all(e["size"] == (_ckpt(reference, 6) / n).stat().st_size for n, e in meta["files"].items())
    ok = _ckpt_verify(capsys, str(_ckpt(reference, 6)))
    assert ok.returncode == 0
    assert ok.stdout.startswith("ok ")
    run = _copy(reference, tmp_path)
    _flip(_shard(_ckpt(run, 4)))
    bad = _ckpt_verify(capsys, str(run / "checkpoints"))
    assert bad.returncode == 2
    assert "DAMAGED" in bad.stdout and "step_0000004" in _one_line_error(bad.stderr)
    # the size check alone cannot see flipped bytes; it is what --sizes-only promises
    assert _ckpt_verify(capsys, "--sizes-only", str(_ckpt(run, 4))).returncode == 0


def test_flipped_bytes_fall_back_and_resume_bit_exact(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    _flip(_shard(_ckpt(run, 6)))
    out = flm("train", TINY, f"train.steps={STEPS}", f"output_dir={run}", "--resume", *COMMON)
    assert "step_0000006: file" in out.stderr and "is damaged" in out.stderr
    assert "falling back to" in out.stderr and "step_0000004" in out.stderr
    assert (run / "checkpoints" / "step_0000006.damaged").is_dir()
    # steps 5 and 6 were trained again from step 4: equal to the uninterrupted run, each step once
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 1))
    assert losses(run) == losses(reference)
    assert _ckpt_verify(capsys, str(_ckpt(run, 6))).returncode == 0


def test_damaged_and_dangling_are_named_and_resume_falls_back(reference, tmp_path):
    """One resume meets a dangling ``latest``, a corrupt ``flm_checkpoint.json`` (step 6) and a
    missing ``.metadata`` (step 4): each is named and the run falls back to step 2."""
    run = _copy(reference, tmp_path)
    (run / "checkpoints" / "latest").write_text("step_0000099\n")
    for step, damage in ((6, "corrupt-meta"), (4, "missing-metadata")):
        DAMAGE[damage][0](_ckpt(run, step))
    # train.steps=2: the fallback checkpoint (step 2) is already the end, so only the load runs
    out = flm("train", TINY, "train.steps=2", f"output_dir={run}", "--resume", *COMMON)
    assert "names step_0000099, which does not exist" in out.stderr, out.stderr[-3000:]
    assert "step_0000006/flm_checkpoint.json is corrupt" in out.stderr
    assert "step_0000004: file .metadata is missing" in out.stderr
    assert "falling back to" in out.stderr and "starting fresh" not in out.stderr
    assert "resumed from" in out.stderr and "step_0000002 at step 2" in out.stderr
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert {p.name for p in (run / "checkpoints").iterdir() if p.is_dir()} == {
        "step_0000002",
        "step_0000004.damaged",
        "step_0000006.damaged",
    }


def test_nothing_verifies_is_one_line_error(reference, tmp_path):
    run = _copy(reference, tmp_path)
    for step, damage in ((6, "truncated-shard"), (4, "empty-shard"), (2, "truncated-shard")):
        DAMAGE[damage][0](_ckpt(run, step))
    out = flm("train", TINY, "train.steps=6", f"output_dir={run}", "--resume", *COMMON, check=False)
    assert out.returncode == 2
    line = _one_line_error(out.stderr)
    assert "no usable checkpoint under" in line
    assert (
        "step_0000006: file" in line and "is truncated" in line and "step_0000004: file" in line and "is empty" in line
    )


def test_used_output_dir_is_refused_without_resume(reference, tmp_path):
    run = _copy(reference, tmp_path)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    out = flm("train", TINY, "train.steps=6", f"output_dir={run}", *COMMON, check=False)
    assert out.returncode == 2
    assert "already holds a run" in _one_line_error(out.stderr) and "--resume" in out.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_concurrent_second_job_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom training.checkpoint.lock import RunLock\n"
            "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
            str(run),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = flm("train", TINY, "train.steps=2", f"output_dir={run}", "--resume", *COMMON, check=False)
        assert out.returncode == 2
        assert "is in use by another job" in _one_line_error(out.stderr) and f"pid {holder.pid}" in out.stderr
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder (kill -9 included): the next job takes it
    RunLock(run).acquire().release()


# ---------------------------------------------------------------- signals and launchers
def _start(run: Path, *extra: str, nproc: int = 1, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "training.cli", "train", TINY, f"output_dir={run}", *COMMON, *extra]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    err = open(run.parent / f"{run.name}.stderr", "w")
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=child_env(**(env or {})),
    )


def _wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _has_step(run: Path, step: int) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and any(json.loads(ln)["step"] >= step for ln in path.read_text().splitlines() if ln.strip())


def _no_process_left(run: Path, timeout: float = 20) -> None:
    _wait_for(lambda: not processes_mentioning(str(run)), timeout, f"the processes of {run} to end")


@pytest.mark.parametrize("moment", ["step", "save"])
def test_sigterm_saves_exits_75_and_resumes_bit_exact(reference, tmp_path, moment, capsys):
    run = tmp_path / "run"
    run.mkdir()
    proc = _start(
        run, f"train.steps={STEPS}", "checkpoint.save_interval=0" if moment == "step" else "checkpoint.save_interval=2"
    )
    if moment == "step":
        _wait_for(lambda: _has_step(run, 1), 120, "step 1")
    else:
        _wait_for(lambda: any((run / "checkpoints").glob("step_*.partial")), 120, "a save in progress")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED
    stderr = (tmp_path / "run.stderr").read_text()
    assert "SIGTERM received" in stderr and "stopped by SIGTERM after step" in stderr
    _no_process_left(run)
    saved = (run / "checkpoints" / "latest").read_text().strip()
    assert _ckpt_verify(capsys, str(run / "checkpoints" / saved)).returncode == 0
    flm("train", TINY, f"train.steps={STEPS}", f"output_dir={run}", "--resume", *COMMON)
    assert [r["step"] for r in read_metrics(run)] == list(range(1, STEPS + 1))
    assert losses(run) == losses(reference)


def test_killed_launcher_takes_its_workers_along(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = _start(run, "train.steps=500", nproc=2)
    _wait_for(lambda: _has_step(run, 1), 240, "step 1 under torchrun")
    assert len(processes_mentioning(str(run))) >= 4  # launcher, torchrun, 2 workers
    proc.kill()  # kill -9: the launcher cannot pass anything on
    proc.wait()
    _no_process_left(run, timeout=60)


# ---------------------------------------------------------------- divergence
def test_spike_is_rolled_back_and_the_run_finishes(tmp_path):
    run = tmp_path / "run"
    out = flm(
        "train",
        TINY,
        "train.steps=8",
        f"output_dir={run}",
        *COMMON,
        "divergence.spike_sigmas=3",
        "divergence.window=3",
        "divergence.max_consecutive=2",
        "divergence.action=rollback",
        env={"FLM_FAULT_LOSS": "tiny:5-6:spike"},
    )
    assert "loss spike" in out.stderr and "rolled back to" in out.stderr and "skipped 16 samples" in out.stderr
    records = read_metrics(run)
    spikes = [r for r in records if r.get("skip_reason") == "spike"]
    assert [r["step"] for r in spikes] == [5, 6]
    after = [r for r in records if r.get("rollbacks")]
    assert [r["step"] for r in after] == [5, 6, 7, 8]
    # the LR is halved after the rollback, and the data of batches 5-6 was skipped
    assert after[0]["consumed_samples"] == 7 * 8
    meta = json.loads((_ckpt(run, 8) / "flm_checkpoint.json").read_text())
    assert meta["step"] == 8 and meta["divergence"] == {"rollbacks": 1}
    # the rollback count is carried over a resume (a requeued job): with max_rollbacks=1 the next
    # run of bad steps (a NaN storm at steps 9-10, the batches after 80 samples; each update skipped)
    # stops instead of rolling back, with one line
    out = flm(
        "train",
        TINY,
        "train.steps=12",
        f"output_dir={run}",
        "--resume",
        *COMMON,
        "train.on_nan=skip",
        "divergence.max_consecutive=2",
        "divergence.action=rollback",
        "divergence.max_rollbacks=1",
        env={"FLM_FAULT_LOSS": "tiny:11-12:nan"},
        check=False,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    line = _one_line_error(out.stderr)
    assert "2 skipped steps in a row (non-finite loss) up to step 10" in line and "after 1 rollbacks" in line
    assert out.stderr.count("update skipped") == 2
    storm = [r for r in read_metrics(run) if r["step"] in (9, 10)]
    assert [(r.get("rollbacks"), r.get("skipped"), r.get("skip_reason")) for r in storm] == [
        (1, True, "non_finite")
    ] * 2
    # nothing diverged was saved (a checkpoint is due every 2 steps): the newest is from before the storm
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000008"


# ---------------------------------------------------------------- disk full
def test_disk_full_is_named_and_previous_checkpoint_stays_valid(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root (mount -t tmpfs)")
    try:
        # one checkpoint is ~1.8 MB: the first fits, the second does not
        out = flm(
            "train",
            TINY,
            "train.steps=4",
            f"output_dir={tmp_path / 'run'}",
            *COMMON,
            f"checkpoint.dir={mnt}",
            check=False,
        )
        assert out.returncode == 2
        line = _one_line_error(out.stderr)
        assert f"disk full while writing a checkpoint into {mnt}" in line and "Worker failure" not in line
        assert (mnt / "latest").read_text().strip() == "step_0000002"
        assert _ckpt_verify(capsys, str(mnt / "step_0000002")).returncode == 0
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_sigterm_to_nproc2_launcher_saves_on_every_rank_and_exits_75(reference, tmp_path):
    """SIGTERM to `flm train --nproc 2`: passed on through torchrun, both ranks stop after the same
    step and save; the launcher exits 75 (torchrun itself reports a plain failure). The TP2 checkpoint
    is resumed by one process, which reads both ranks' shards: the run continues the reference's losses."""
    run = tmp_path / "run"
    run.mkdir()
    proc = _start(run, f"train.steps={STEPS}", "checkpoint.save_interval=0", "parallel.tp=2", nproc=2)
    _wait_for(lambda: _has_step(run, 1), 240, "step 1 under torchrun")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED
    _no_process_left(run)
    stderr = (tmp_path / "run.stderr").read_text()
    assert "stopped by SIGTERM after step" in stderr
    flm("train", TINY, f"train.steps={STEPS}", f"output_dir={run}", "--resume", *COMMON)
    got, ref = losses(run), losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in ref:  # TP2 (and its checkpoint) against one process: equal up to the order of the reductions
        assert got[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6)
