"""Memory and time of ``flm grow`` vs a plain load + save of the same checkpoint.

    python bench/grow_memory.py [--hidden 512 --layers 8 --vocab 16000] [--out /tmp/flm-grow-bench]

Makes a checkpoint (random weights and Adam moments; a few hundred MB; per-layer tensors stored one
layer per chunk, as training checkpoints are), then runs, each in a fresh process: (a) the reference,
megatron-core's own load + save of the same checkpoint (``dist_checkpointing.load_plain_tensors``, then
``dist_checkpointing.save``), (b) ``flm grow`` with an MSG plan doubling hidden and FFN and adding
layers, (c) the same with ``--verify``. Prints peak RSS above the process's baseline (after imports),
the largest grown tensor, time, and the ratios the goals are stated in (grow's peak extra memory /
largest grown tensor, goal <= 3; time grow / load+save, goal <= 2). The grown checkpoint is ~5x the
source, so grow writes ~5x the bytes the reference writes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, sys, threading, time
sys.path.insert(0, {repo!r})
import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from training.engine.parallel import init_process_group
init_process_group()
import training.orchestration.grow, training.checkpoint.logical  # imports done before the baseline

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

# ru_maxrss would include the import-time peak; sample the resident set instead
base = rss_kb()
peak = [base]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_kb())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
mode, src, dst, plan = sys.argv[1:5]
if mode == "copy":
    # the stock megatron-core path: every tensor loaded, then saved (what a user would do by hand)
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    plain = dist_checkpointing.load_plain_tensors(src)
    state = {{k: ShardedTensor.from_rank_offsets(k, v) for k, v in plain.items() if hasattr(v, "shape")}}
    import os
    os.makedirs(dst)
    dist_checkpointing.save(state, dst)
else:
    from training.orchestration.grow import grow_from_files
    from pathlib import Path
    grow_from_files(Path(src), Path(dst), Path(plan), verify=(mode == "grow-verify"))
dt = time.perf_counter() - t0
done.set()
print(json.dumps({{"time_s": dt, "base_kb": base, "peak_kb": max(peak[0], rss_kb())}}))
"""


def make_checkpoint(path: Path, layers: int, hidden: int, vocab: int) -> dict:
    import torch

    import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
    from growth.roles import logical_shapes
    from growth.shape import ModelShape
    from training.checkpoint.logical import write_logical
    from training.config import RunConfig
    from training.config_base import from_dict, to_dict

    run = from_dict(
        RunConfig,
        {
            "model": {
                "num_layers": layers,
                "hidden_size": hidden,
                "ffn_hidden_size": 4 * hidden,
                "num_attention_heads": hidden // 64,
                "vocab_size": vocab,
                "tie_embeddings": False,
            }
        },
    )
    shapes = logical_shapes(run.model, ModelShape.from_model_config(run.model))
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    moments = {
        m: {k: torch.rand(s, generator=gen) * 1e-4 for k, s in shapes.items()} for m in ("exp_avg", "exp_avg_sq")
    }
    write_logical(path, params, {"config": to_dict(run), "step": 10, "consumed_samples": 0, "adam_step": 10}, moments)
    return {"model": to_dict(run.model), "bytes": 3 * sum(v.numel() * 4 for v in params.values())}


def child(mode: str, src: Path, dst: Path, plan: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(repo=str(REPO)), mode, str(src), str(dst), str(plan)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--out", default="/tmp/flm-grow-bench")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    info = make_checkpoint(out / "src", args.layers, args.hidden, args.vocab)
    h, L = args.hidden, args.layers
    plan = out / "plan.yaml"
    plan.write_text(
        json.dumps(
            {
                "new": {
                    "layers": L + L // 2,
                    "hidden": 2 * h,
                    "ffn": 8 * h,
                    "heads": 2 * h // 64,
                    "query_groups": 2 * h // 64,
                    "head_dim": 64,
                    "vocab": info["model"]["vocab_size"] + (-info["model"]["vocab_size"]) % 64,
                },
                "operators": {"hidden": "msg", "ffn": "msg", "heads": "msg", "depth": "msg"},
                "depth": {"placement": "interleave"},
                "ramp": {"steps": 100},
            }
        )
    )
    # interleaved repeats, medians: the disk's write speed on shared machines varies several-fold
    # from minute to minute, and a ratio of two runs minutes apart would measure that
    runs: dict[str, list[dict]] = {"load+save": [], "grow": [], "grow+verify": []}
    modes = {"load+save": "copy", "grow": "grow", "grow+verify": "grow-verify"}
    for rep in range(args.repeats):
        for name, mode in modes.items():
            dst = out / f"{mode}-{rep}"
            runs[name].append(child(mode, out / "src", dst, plan))
            if rep < args.repeats - 1:
                shutil.rmtree(dst)
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("time_s",)}
        | {
            "extra": statistics.median((r["peak_kb"] - r["base_kb"]) * 1024 for r in rs),
            "times": [round(r["time_s"], 1) for r in rs],
        }
        for name, rs in runs.items()
    }
    largest_new = 4 * max(2 * h * info["model"]["vocab_size"], (L + L // 2) * 8 * h * 2 * h)
    ckpt_mb = sum(f.stat().st_size for f in (out / "src").rglob("*") if f.is_file()) / 2**20
    grown_mb = sum(f.stat().st_size for f in (out / f"grow-{args.repeats - 1}").rglob("*") if f.is_file()) / 2**20
    print(
        f"checkpoint: {ckpt_mb:.0f} MiB (params + 2 Adam moments), model {info['model']['num_layers']} x "
        f"{info['model']['hidden_size']}, vocab {info['model']['vocab_size']}; grown: {grown_mb:.0f} MiB; "
        f"medians of {args.repeats} interleaved runs"
    )
    for name, r in med.items():
        print(
            f"{name:11s}: {r['time_s']:6.1f} s {r['times']}, peak RSS above baseline {r['extra'] / 2**20:6.0f} MiB "
            f"= {r['extra'] / largest_new:4.1f} x the largest grown tensor ({largest_new / 2**20:.0f} MiB)"
        )
    print(f"ratio time grow / load+save: {med['grow']['time_s'] / med['load+save']['time_s']:.2f} (goal <= 2)")
    print(f"ratio grow peak extra memory / largest tensor: {med['grow']['extra'] / largest_new:.1f} (goal <= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
