"""Determinism: the same seed gives byte-identical instances across processes and hash seeds;
instance i does not depend on how many are generated; another seed gives other instances."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval_iq.generate import generate
from eval_iq.instances import INSTANCE_KEYS, to_jsonl
from eval_iq.registry import SUBTASKS

REPO_ROOT = Path(__file__).resolve().parents[2]


def export(tmp: Path, hash_seed: str, data_dir: Path, seed: str = "1234") -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval_iq.cli",
            "--export-instances",
            str(tmp),
            "--size",
            "25",
            "--seed",
            seed,
            "--data-dir",
            str(data_dir),
            "--subtasks",
            "all,bustm",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(tmp.glob("*.jsonl"))}


def test_same_seed_byte_identical_across_processes(tmp_path, iq_data_dir):
    a = export(tmp_path / "a", "0", iq_data_dir)
    b = export(tmp_path / "b", "12345", iq_data_dir)
    assert len(a) == len(SUBTASKS) == 18
    assert a == b
    # the exported files are exactly the canonical serialisation of generate()
    for name, spec in SUBTASKS.items():
        data = (tmp_path / "a" / f"{spec.task}.jsonl").read_bytes()
        assert data == to_jsonl(generate(name, size=25, data_dir=iq_data_dir))


def test_other_seed_gives_other_instances(tmp_path, iq_data_dir):
    a = {n: generate(n, seed=1, size=10, data_dir=iq_data_dir) for n in SUBTASKS}
    b = {n: generate(n, seed=2, size=10, data_dir=iq_data_dir) for n in SUBTASKS}
    for n in SUBTASKS:
        assert to_jsonl(a[n]) != to_jsonl(b[n]), n


@pytest.mark.parametrize("name", list(SUBTASKS))
def test_instance_depends_on_index_not_size(name, iq_data_dir):
    small = generate(name, size=5, data_dir=iq_data_dir)
    large = generate(name, size=40, data_dir=iq_data_dir)
    assert large[:5] == small
    assert all(tuple(sorted(i)) == tuple(sorted(INSTANCE_KEYS)) for i in large)
    assert [i["index"] for i in large] == list(range(40))


def test_bad_generator_options():
    from eval_iq.errors import IQError, UnknownSubtaskError

    with pytest.raises(UnknownSubtaskError, match="unknown IQ subtask 'nope'"):
        generate("nope")
    with pytest.raises(IQError, match="size must be an integer >= 1"):
        generate("counting", size=0)
    with pytest.raises(IQError, match="shots must be an integer >= 0"):
        generate("counting", shots="two")
    assert generate("counting", size="3", seed="7") == generate("counting", size=3, seed=7)
