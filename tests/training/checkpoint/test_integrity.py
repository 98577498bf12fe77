"""Checkpoint verification while loading (training/checkpoint/integrity.py): the hashes are computed by
background threads while the caller's load reads the checkpoint, and a damaged file is still refused
(explicit checkpoint) or replaced by the newest checkpoint that verifies (resume), in one process and
over two gloo ranks that each hash a share of the files. Saving spreads the manifest's hashes over
the ranks the same way. The CLI-level fault tests are in tests/training/test_faults.py."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from training.checkpoint import CheckpointError, commit, integrity, load_verified, resume_verified, verify
from training.checkpoint.integrity import _deal, _share, manifest
from training.local_launch import free_port

LAYOUT = SimpleNamespace(tp=1, pp=1, dp=1)
# sizes chosen so the two-rank split gives each rank two files (largest first, to the lighter rank)
FILES = {"__0_0.distcp": 3 << 20, "__1_0.distcp": 2 << 20, "common.pt": 1 << 20, ".metadata": 4096}


def _save(root: Path, step: int) -> Path:
    def write(partial: Path) -> None:
        for i, (name, size) in enumerate(FILES.items()):
            (partial / name).write_bytes(bytes((step * 31 + i + j) % 251 for j in range(256)) * (size // 256))

    return commit(root, step, write, {"engine": "megatron"}, LAYOUT)


def _flip(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(path.stat().st_size // 2)
        f.write(bytes([b[0] ^ 0x01]))


class Loader:
    """A load that reads every file (as a checkpoint reader does) and records, for each call, the
    checkpoint and whether hash threads were running at the same time."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.fail_on = fail_on

    def __call__(self, path: Path) -> None:
        overlapped = any(t.name.startswith("flm-hash") for t in threading.enumerate())
        self.calls.append((path.name, overlapped))
        for name in FILES:
            (path / name).read_bytes()
        if self.fail_on and path.name == self.fail_on:
            raise ValueError(f"unpickling {path.name} failed")  # what a reader may say about damaged bytes


def test_flipped_byte_is_refused_through_the_load_path(tmp_path):
    ckpt = _save(tmp_path, 2)
    load_verified(ckpt, Loader(), check_hash=True)  # intact: loads, no error
    _flip(ckpt / "common.pt")
    loader = Loader()
    with pytest.raises(CheckpointError) as err:
        load_verified(ckpt, loader, check_hash=True)
    msg = str(err.value)
    assert "\n" not in msg and f"{ckpt}: file common.pt is damaged" in msg and "differs from the one recorded" in msg
    assert "--resume without a path" in msg
    assert loader.calls == [(ckpt.name, True)], "the load ran while the hash threads ran"
    # the same verdict as the sequential verify
    with pytest.raises(CheckpointError, match="file common.pt is damaged"):
        verify(ckpt)
    # no hashes: the flipped byte passes (what checkpoint.verify_hash=false promises), sizes still checked
    load_verified(ckpt, Loader(), check_hash=False)
    os.truncate(ckpt / ".metadata", 10)
    loader = Loader()
    with pytest.raises(CheckpointError, match="file .metadata is truncated"):
        load_verified(ckpt, loader, check_hash=True)
    assert loader.calls == [], "a size problem is refused before anything is read"


def test_reader_broken_by_the_damage_gives_way_to_the_one_line_error(tmp_path):
    ckpt = _save(tmp_path, 2)
    _flip(ckpt / "__1_0.distcp")
    with pytest.raises(CheckpointError, match="file __1_0.distcp is damaged"):
        load_verified(ckpt, Loader(fail_on=ckpt.name), check_hash=True)
    # on an intact checkpoint the reader's own error is the error
    good = _save(tmp_path, 4)
    with pytest.raises(ValueError, match="unpickling"):
        load_verified(good, Loader(fail_on=good.name), check_hash=True)


def test_resume_loads_the_damaged_latest_then_falls_back(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        _save(root, step)
    _flip(root / "step_0000006" / "__0_0.distcp")
    os.truncate(root / "step_0000004" / "common.pt", 0)
    loader = Loader(fail_on="step_0000006")
    with caplog.at_level(logging.WARNING):
        chosen = resume_verified(root, loader, check_hash=True)
    assert chosen == root / "step_0000002"
    # step 6 passed the size check and was loaded (its hashes alongside); step 4 was refused by size
    assert loader.calls == [("step_0000006", True), ("step_0000002", True)]
    text = caplog.text
    assert "step_0000006: file __0_0.distcp is damaged" in text and "step_0000004: file common.pt is empty" in text
    assert "falling back to" in text and "step_0000002" in text
    assert (root / "latest").read_text().strip() == "step_0000002"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "step_0000002",
        "step_0000004.damaged",
        "step_0000006.damaged",
    ]
    # nothing verifies: one line naming every problem
    _flip(root / "step_0000002" / ".metadata")
    with pytest.raises(CheckpointError) as err:
        resume_verified(root, Loader(), check_hash=True)
    assert str(err.value).startswith(f"no usable checkpoint under {root}: ") and "\n" not in str(err.value)


def test_share_deals_every_file_once_balanced_by_size():
    files = {n: {"size": s, "h": "x"} for n, s in FILES.items()}
    shares = [_share(files, "h", r, 2) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == sorted(FILES)
    assert shares == [["__0_0.distcp", ".metadata"], ["__1_0.distcp", "common.pt"]]
    assert _share(files, "h", 0, 1) == ["__0_0.distcp", "__1_0.distcp", "common.pt", ".metadata"]


def _two_rank_worker(rank: int, port: int, root: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        loader = Loader()
        chosen = resume_verified(Path(root), loader, check_hash=True)
        Path(result, str(rank)).write_text(f"{chosen.name} {[c for c, _ in loader.calls]}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_hash_their_shares_and_agree_on_the_fallback(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        _save(root, step)
    # hashed by rank 1 (see the share test): rank 0 alone could not see it
    _flip(root / "step_0000004" / "common.pt")
    (tmp_path / "r").mkdir()
    mp.spawn(_two_rank_worker, args=(free_port(), str(root), str(tmp_path / "r")), nprocs=2)
    expected = "step_0000002 ['step_0000004', 'step_0000002']"
    assert [(tmp_path / "r" / str(r)).read_text() for r in (0, 1)] == [expected, expected]
    assert (root / "step_0000004.damaged").is_dir() and (root / "latest").read_text().strip() == "step_0000002"


def _two_rank_save_worker(rank: int, port: int, root: str, result: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    hashed: list[str] = []
    real = integrity.file_hash

    def recording(path: Path, algo: str = integrity.HASH_ALGO) -> str:
        hashed.append(Path(path).name)
        return real(path, algo)

    integrity.file_hash = recording  # which files this rank hashes (the real hash is still computed)
    try:
        ckpt = _save(Path(root), 2)
        Path(result, str(rank)).write_text("\n".join([ckpt.name, *hashed]))
    finally:
        integrity.file_hash = real
        dist.destroy_process_group()


def test_two_ranks_save_each_hashing_its_share_the_manifest_one_process_writes(tmp_path):
    """Saving: each rank hashes only its byte-balanced share of the files (the split loading uses)
    and the manifest rank 0 commits is the one a single process computes."""
    root = tmp_path / "checkpoints"
    (tmp_path / "r").mkdir()
    mp.spawn(_two_rank_save_worker, args=(free_port(), str(root), str(tmp_path / "r")), nprocs=2)
    # per rank: the directory commit returned, then the files the rank hashed
    results = [(tmp_path / "r" / str(r)).read_text().split("\n") for r in (0, 1)]
    assert [r[0] for r in results] == ["step_0000002", "step_0000002"]
    hashed = [r[1:] for r in results]
    ckpt = root / "step_0000002"
    assert (root / "latest").read_text().strip() == ckpt.name
    sizes = {n: (ckpt / n).stat().st_size for n in FILES}
    assert [sorted(h) for h in hashed] == [sorted(_deal(sizes, r, 2)) for r in (0, 1)]
    assert sorted(hashed[0] + hashed[1]) == sorted(FILES), "every file hashed once, by one rank"
    assert [sum(sizes[n] for n in h) for h in hashed] == [(3 << 20) + 4096, 3 << 20]
    meta = json.loads((ckpt / "flm_checkpoint.json").read_text())
    assert meta["files"] == manifest(ckpt, meta["hash_algo"])
    assert list(meta["files"]) == sorted(FILES), "in the order a single process records them"
    verify(ckpt)  # and the checkpoint verifies


def test_one_process_save_hashes_every_file_itself(tmp_path, monkeypatch):
    hashed: list[str] = []
    real = integrity.file_hash
    monkeypatch.setattr(integrity, "file_hash", lambda path, algo: hashed.append(Path(path).name) or real(path, algo))
    ckpt = _save(tmp_path, 2)
    assert sorted(hashed) == sorted(FILES)
    meta = json.loads((ckpt / "flm_checkpoint.json").read_text())
    monkeypatch.setattr(integrity, "file_hash", real)
    assert meta["files"] == manifest(ckpt, meta["hash_algo"])
