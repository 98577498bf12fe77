"""Peak memory of ``flm export-hf`` and ``flm import-hf`` on a model of more than 1B parameters.

    nice -n 10 python bench/export_memory.py [--layers 22 --hidden 2048 --ffn 5632 --heads 32 --groups 4
                                              --vocab 32000] [--out /tmp/flm-export-bench] [--keep]

Writes a project checkpoint of a Llama-shaped model (random float32 weights, untied embeddings; by
default TinyLlama's shape, 1.1B parameters, 4.4 GB; written layer by layer, so this script needs
little memory itself), then runs, each in a fresh process: (a) the export to a transformers
directory (``export_checkpoint``, 2GB shards), (b) the import of that directory back into a project
checkpoint (``import_hf``). Each child reports its peak RSS (``VmHWM`` of ``/proc/self/status``: the
whole process, imports included; not ``getrusage``'s ``ru_maxrss``, which Linux carries over from
the parent across ``execve``) and its RSS after the imports (the baseline). Finally the
imported checkpoint is compared with the original, tensor by tensor, one layer at a time (export and
import of an fp32 standard-parametrisation model are exact, so they must be equal).

Prints peak RSS against the largest tensor (the largest exported tensor, the embedding) and against
the model size; the goal is peak RSS <= 3 x the largest tensor + 1 GB. Needs about 3 x the model's
size of free disk under ``--out`` (removed at the end unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GB = 10**9


def model_section(args) -> dict:
    return {
        "num_layers": args.layers,
        "hidden_size": args.hidden,
        "ffn_hidden_size": args.ffn,
        "num_attention_heads": args.heads,
        "num_query_groups": args.groups,
        "vocab_size": args.vocab,
        "seq_length": 2048,
        "normalization": "RMSNorm",
        "activation": "swiglu",
        "position_embedding": "rope",
        "tie_embeddings": False,
        "bias": False,
    }


def make_checkpoint(path: Path, model: dict) -> dict[str, tuple[int, ...]]:
    """A project checkpoint of ``model`` with random weights, produced one layer at a time; its shapes."""
    import warnings

    import torch

    from growth import roles as R
    from growth.shape import ModelShape
    from training.checkpoint.dcp_io import ChunkedTensor
    from training.checkpoint.logical import layer_rows, write_logical_chunks
    from training.config import RunConfig
    from training.config_base import from_dict, to_dict

    run = from_dict(RunConfig, {"name": "export-bench", "model": model})
    shapes = R.logical_shapes(run.model, ModelShape.from_model_config(run.model))

    def produce(key: str, index: int) -> torch.Tensor:
        shape = shapes[key]
        rows = layer_rows(key)
        chunk = (rows, *shape[1:]) if rows else shape
        gen = torch.Generator().manual_seed(zlib.crc32(f"{key}:{index}".encode()))
        if "norm" in key:
            return torch.randn(chunk, generator=gen).mul_(0.1).add_(1)
        return torch.randn(chunk, generator=gen).mul_(0.02)

    entries = [
        ChunkedTensor(k, s, torch.float32, lambda i, k=k: produce(k, i), layer_rows(k)) for k, s in shapes.items()
    ]
    meta = {"config": to_dict(run), "step": 0, "consumed_samples": 0, "adam_step": 0}
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process, as intended
    write_logical_chunks(path, entries, meta, has_moments=False)
    return shapes


def status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident since the process image started) of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(mode: str, src: str, dst: str) -> None:
    """Run one export or import in this process; print its time, baseline and peak RSS as JSON."""
    from training.hf.export import export_checkpoint
    from training.hf.importer import import_hf

    base = status_bytes("VmRSS")
    t0 = time.perf_counter()
    if mode == "export":
        export_checkpoint(src, dst, no_tokenizer=True, max_shard_size="2GB")
    else:
        import_hf(src, dst, no_tokenizer=True)
    seconds = time.perf_counter() - t0
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a child's ru_maxrss
    # is at least its parent's peak at the fork (this script's own, while it wrote the checkpoint)
    peak = status_bytes("VmHWM")
    print(json.dumps({"time_s": seconds, "base": base, "peak": peak}))


def run_child(mode: str, src: Path, dst: Path) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(src), str(dst)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_weights(a: Path, b: Path, shapes: dict[str, tuple[int, ...]], vocab: int) -> bool:
    """Whether checkpoints ``a`` and ``b`` hold equal model tensors (read one layer at a time; the
    padded vocabulary rows, which the export drops and the import fills with zeros, left out)."""
    import torch

    from training.checkpoint.dcp_io import TensorReader

    ra, rb = TensorReader(a), TensorReader(b)
    for key, shape in shapes.items():
        for i in range(shape[0]) if key.startswith("decoder.layers.") else [None]:
            ta = ra.read(key) if i is None else ra.read(key, i, 1)
            tb = rb.read(key) if i is None else rb.read(key, i, 1)
            if i is None and ta.dim() == 2:
                ta, tb = ta[:vocab], tb[:vocab]
            if not torch.equal(ta, tb):
                return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--out", default="/tmp/flm-export-bench")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints and the export")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    shapes = make_checkpoint(out / "ckpt", model_section(args))
    made = time.perf_counter() - t0
    params = sum(math.prod(s) for s in shapes.values())
    model_bytes = 4 * params
    # the largest tensor the export holds: the embedding / output layer (V x H), or one layer of a
    # per-layer tensor (the checkpoint stores and the export reads them one layer at a time)
    largest = 4 * max(math.prod(s[1:]) if k.startswith("decoder.layers.") else math.prod(s) for k, s in shapes.items())
    runs = {
        "export": run_child("export", out / "ckpt", out / "hf"),
        "import": run_child("import", out / "hf", out / "imported"),
    }
    shards = sorted(p.name for p in (out / "hf").glob("*.safetensors"))
    equal = same_weights(out / "ckpt", out / "imported", shapes, args.vocab)
    print(
        f"model: {params / 1e9:.2f}B parameters ({args.layers} x {args.hidden}, ffn {args.ffn}, {args.heads} heads / "
        f"{args.groups} groups, vocab {args.vocab}), float32: {model_bytes / GB:.2f} GB; largest tensor "
        f"{largest / GB:.3f} GB; checkpoint written in {made:.0f} s; export: {len(shards)} safetensors file(s)"
    )
    goal = 3 * largest + GB
    for name, r in runs.items():
        print(
            f"{name}: {r['time_s']:6.1f} s, peak RSS {r['peak'] / GB:5.2f} GB (after imports {r['base'] / GB:4.2f} GB, "
            f"+{(r['peak'] - r['base']) / GB:4.2f} GB) = {r['peak'] / largest:4.1f} x the largest tensor, "
            f"{r['peak'] / model_bytes:5.1%} of the model; goal <= 3 x largest + 1 GB = {goal / GB:.2f} GB: "
            f"{'met' if r['peak'] <= goal else 'NOT met'}"
        )
    print(f"imported checkpoint equals the original: {equal}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if equal and all(r["peak"] <= goal for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
