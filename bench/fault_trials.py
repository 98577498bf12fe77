"""Kill -9 at random moments, resume, compare with an uninterrupted run (docs/faults.md).

    python bench/fault_trials.py [--trials 20] [--kind train|staged|both] [--seed 0] [--nproc 1]

Each trial starts ``flm train`` (in its own process group), kills the whole group with SIGKILL after
a random delay (uniform over the reference run's time from its first step to its end, so kills land
in steps, in saves, and for ``staged`` in the growth of a checkpoint and the stage transition), then
runs ``flm train --resume`` until the run completes and compares every step's loss with the
uninterrupted reference run. ``train``: one stage, a checkpoint every step. ``staged``: two stages
(the second grown from the first), a checkpoint every step. A trial is *bit-exact* when every
(stage, step) appears once with exactly the reference loss; *corrupt* counts complete checkpoints
(``step_N`` with metadata) that fail ``flm ckpt verify`` and resumes that fail. Prints
``k/N bit-exact, c corrupt``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.procs import child_env, kill_group  # noqa: E402  (the tests' process helpers: same environment)
from bench.staged_run import write_staged_run  # noqa: E402

COMMON = ["logging.progress_bar=false", "logging.tensorboard=false", "train.eval_interval=1000"]

#: the staged trial: configs/runs/tiny_staged.yaml on one process, a checkpoint every step
STAGED = (
    "name=ft",
    "checkpoint.save_interval=1",
    "checkpoint.keep_last=3",
    "stages.0.parallel={tp: 1, dp: 1}",
    "stages.0.tokens=2048",
    "stages.1.parallel={tp: 1, dp: 1}",
    "stages.1.tokens=2048",
)


def command(kind: str, out: Path, nproc: int, resume: bool) -> list[str]:
    if kind == "train":
        args = [
            "train",
            str(REPO / "configs/runs/tiny.yaml"),
            f"output_dir={out}",
            "train.steps=6",
            "checkpoint.save_interval=1",
            "checkpoint.keep_last=3",
            *COMMON,
        ]
    else:
        config = out.parent / f"{out.name}.yaml"
        if not config.exists():
            write_staged_run(config, out, *STAGED)
        args = ["train", str(config)]
    if resume:
        args.append("--resume")
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    return [sys.executable, "-m", "training.cli", *args]


def run(cmd: list[str], log: Path, root: Path, kill_after: float | None = None) -> tuple[int, float, bool]:
    """Run ``cmd`` in its own process group; SIGKILL the group after ``kill_after`` seconds of training.
    Returns (exit status, seconds from the first metrics record to the end, whether it was killed)."""
    with open(log, "a") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=err, stderr=err, start_new_session=True)
        started = None
        killed = False
        try:
            while proc.poll() is None:
                if started is None and _first_record(root):
                    started = time.monotonic()
                if kill_after is not None and started is not None and time.monotonic() - started >= kill_after:
                    kill_group(proc)
                    killed = True
                    break
                time.sleep(0.01)
        except BaseException:  # the benchmark itself interrupted: take the trial's processes along
            kill_group(proc)
            raise
        code = proc.wait()
        # kill -9 of the group takes the workers of megatron's writer along
        kill_group(proc)
    return code, (time.monotonic() - started) if started else 0.0, killed


def _first_record(root: Path) -> bool:
    return root.exists() and any(p.stat().st_size > 0 for p in root.rglob("metrics.jsonl"))


def all_losses(root: Path) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = {}
    for path in sorted(root.rglob("metrics.jsonl")):
        stage = str(path.parent.relative_to(root))
        for line in path.read_text().splitlines():
            r = json.loads(line)
            out.setdefault((stage, r["step"]), []).append(r["loss"])
    return out


def corrupt_checkpoints(root: Path) -> list[str]:
    from training.checkpoint import CheckpointError, verify  # after sys.path is set (run from anywhere)

    bad = []
    for meta in root.rglob("flm_checkpoint.json"):
        ckpt = meta.parent
        if ckpt.name.endswith(".partial"):
            continue
        try:
            verify(ckpt)
        except CheckpointError as err:
            bad.append(str(err))
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--kind", choices=["train", "staged", "both"], default="both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the trial directories")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a trial's processes are killed too
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="flm-fault-trials-"))
    kinds = ["train", "staged"] if args.kind == "both" else [args.kind]
    refs, spans = {}, {}
    for kind in kinds:
        ref = work / f"ref-{kind}"
        code, span, _ = run(command(kind, ref, args.nproc, False), work / f"ref-{kind}.log", ref)
        if code != 0:
            print(f"reference run {kind} failed ({code}); see {work / f'ref-{kind}.log'}")
            return 1
        refs[kind], spans[kind] = all_losses(ref), span
    exact = corrupt = 0
    for t in range(args.trials):
        kind = kinds[t % len(kinds)]
        out = work / f"trial{t:03d}-{kind}"
        log = work / f"trial{t:03d}.log"
        delay = rng.uniform(0, 0.95 * spans[kind])
        code, _, killed = run(command(kind, out, args.nproc, False), log, out, kill_after=delay)
        resumes = 0
        while code != 0 and resumes < 5:
            resumes += 1
            code, _, _ = run(command(kind, out, args.nproc, True), log, out)
        bad = corrupt_checkpoints(out)
        got = all_losses(out) if out.exists() else {}
        same = code == 0 and got == refs[kind]
        corrupt += len(bad) + int(code != 0)
        exact += int(same)
        print(
            f"trial {t + 1}/{args.trials} {kind}: kill -9 after {delay:.2f}s of training "
            f"({'killed' if killed else 'finished first'}), {resumes} resume(s): "
            f"{'bit-exact' if same else 'DIFFERENT'}{'' if not bad else f', corrupt: {bad[0]}'}",
            flush=True,
        )
        if not args.keep and same and not bad:
            shutil.rmtree(out, ignore_errors=True)
    print(f"{exact}/{args.trials} bit-exact, {corrupt} corrupt")
    if args.keep or exact < args.trials:
        print(f"trial directories: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if exact == args.trials and corrupt == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
