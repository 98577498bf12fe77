"""Checkpoint verification while loading vs before loading (docs/faults.md, "Checkpoint integrity").

    python bench/verify_load.py [--mib 512] [--files 4] [--repeats 3] [--cache cold|warm|both]

Writes a torch_dist (DCP) checkpoint of ``--mib`` MiB of fp32 tensors in ``--files`` shard files
through the project's atomic save (so it has its manifest), then times, alternating, in one process:

- ``before``: the previous path: ``verify`` (every file hashed, in parallel threads), then the load;
- ``while``: ``load_verified``: the size check, then the load with the hashes computed by background
  threads alongside it (what ``flm train --resume`` and ``--init-from`` do now);
- ``load``: the load alone (``checkpoint.verify_hash: false`` minus the size check), the floor.

The load is torch DCP's ``load`` into preallocated tensors (what megatron's ``dist_checkpointing``
runs under the megatron engine). ``cold``: the files are dropped from the page cache before each
measurement (``posix_fadvise(DONTNEED)``; no root needed), so reading hits the disk; ``warm``: they
stay cached, so the hash and the load compete for CPU only. Prints the median wall seconds of each
path, the ratio before / while, the median CPU seconds of this process for each path, and the
machine's load average (on a machine whose cores are busy with other work, overlapping cannot help:
the same CPU work is queued behind the others).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

from training.checkpoint import commit, load_verified, verify  # noqa: E402
from training.checkpoint.integrity import HASH_ALGO  # noqa: E402

TENSOR_MIB = 16
# DCP's note that it saves/loads in a single process (no process group here, on purpose)
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def make_checkpoint(root: Path, mib: int, files: int) -> tuple[Path, dict[str, torch.Tensor]]:
    n = max(1, mib // TENSOR_MIB)
    numel = TENSOR_MIB * (1 << 20) // 4
    gen = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(numel, generator=gen) for i in range(n)}

    def write(partial: Path) -> None:
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(partial), thread_count=files), no_dist=True)

    path = commit(root, 1, write, {"engine": "bench"}, SimpleNamespace(tp=1, pp=1, dp=1))
    return path, {k: torch.empty_like(v) for k, v in state.items()}


def drop_cache(path: Path) -> None:
    """Evict the checkpoint's files from the page cache (clean pages: DCP's writer syncs its files)."""
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=512, help="checkpoint size (default 512 MiB)")
    p.add_argument("--files", type=int, default=4, help="shard files (DCP writer threads; default 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", choices=["cold", "warm", "both"], default="both")
    args = p.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="flm-verify-load-") as tmp:
        path, target = make_checkpoint(Path(tmp), args.mib, args.files)
        size = sum(f.stat().st_size for f in path.iterdir()) / (1 << 20)

        def load(p: Path) -> None:
            dcp.load(target, storage_reader=dcp.FileSystemReader(str(p)), no_dist=True)

        paths = {
            "before": lambda: (verify(path), load(path)),
            "while": lambda: load_verified(path, load),
            "load": lambda: load(path),
        }
        print(
            f"checkpoint: {size:.0f} MiB in {len(list(path.glob('*.distcp')))} shard files, hash {HASH_ALGO}, "
            f"{os.cpu_count()} CPU(s), {args.repeats} repeat(s), median seconds"
        )
        for cache in ["cold", "warm"] if args.cache == "both" else [args.cache]:
            times: dict[str, list[float]] = {k: [] for k in paths}
            cpu: dict[str, list[float]] = {k: [] for k in paths}
            if cache == "warm":
                paths["load"]()  # fill the page cache
            for _ in range(args.repeats):
                for name, run in paths.items():
                    if cache == "cold":
                        drop_cache(path)
                    start, start_cpu = time.perf_counter(), time.process_time()
                    run()
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
            med = {k: statistics.median(v) for k, v in times.items()}
            mcpu = {k: statistics.median(v) for k, v in cpu.items()}
            print(
                f"{cache:>4} cache: verify then load {med['before']:.2f} s, load while verifying {med['while']:.2f} s, "
                f"load alone {med['load']:.2f} s; before / while = {med['before'] / med['while']:.2f}x "
                f"(CPU s of this process: {mcpu['before']:.2f}, {mcpu['while']:.2f}, {mcpu['load']:.2f}; "
                f"load average {os.getloadavg()[0]:.1f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
