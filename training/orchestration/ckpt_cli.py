"""``flm ckpt verify PATH [--sizes-only]``: check checkpoints against the sizes and hashes recorded at save."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ckpt",
        help="inspect checkpoints (verify their files)",
        description="Checkpoint tools. Each checkpoint's flm_checkpoint.json records the size and hash of "
        "every file, written with the save (docs/faults.md).",
    )
    sub = p.add_subparsers(dest="ckpt_command", metavar="ACTION")
    sub.required = True
    v = sub.add_parser(
        "verify",
        help="check a checkpoint's files against their recorded sizes and hashes",
        description="Verify PATH: a step_N directory, or a checkpoint root (every step_N under it, and what "
        "'latest' names). Prints one line per checkpoint; exits 2 when any is damaged.",
    )
    v.add_argument("path", help="a step_N checkpoint directory or a checkpoint root")
    v.add_argument("--sizes-only", action="store_true", help="check file sizes only (no read of the data)")
    v.set_defaults(func=run_verify)
    return p


def run_verify(args) -> int:
    from pathlib import Path  # (with the rest) startup time: torch loads when the command runs

    from training.checkpoint import LATEST_FILE, CheckpointError, is_checkpoint, verify
    from training.checkpoint.integrity import step_dirs

    path = Path(args.path)
    check_hash = not args.sizes_only
    if is_checkpoint(path) or not path.is_dir():
        if not path.exists():
            raise CheckpointError(f"{path} does not exist; pass a step_N directory or a checkpoint root")
        meta = verify(path, check_hash=check_hash)
        print(
            f"ok {path}: step {meta.get('step')}, {len(meta.get('files') or {})} files "
            f"{'sized' if args.sizes_only else 'hashed'}"
            + ("" if meta.get("files") else " (no manifest: saved by an older version)")
        )
        return 0
    bad = []
    dirs = step_dirs(path)
    if not dirs:
        raise CheckpointError(f"no checkpoint in {path}: neither flm_checkpoint.json nor step_N directories")
    for _, d in dirs:
        try:
            meta = verify(d, check_hash=check_hash)
            print(f"ok {d}: step {meta.get('step')}, {len(meta.get('files') or {})} files")
        except CheckpointError as err:
            bad.append(str(err))
            print(f"DAMAGED {err}")
    latest = path / LATEST_FILE
    if latest.is_file() and not (path / latest.read_text().strip()).is_dir():
        bad.append(f"{latest} names {latest.read_text().strip()}, which does not exist")
        print(f"DANGLING {bad[-1]}")
    if bad:
        raise CheckpointError(
            f"{len(bad)} problem(s) under {path}: {bad[0]}; `flm train --resume` falls back to the "
            "newest checkpoint that verifies"
        )
    return 0
