"""The GPU check (``make gpu-check``): the megatron engine on one CUDA GPU, in one command, in a few
minutes. Its companion ``make gpu-wheels`` runs on a machine with a package registry and collects
the wheels the GPU machine lacks.

    python bench/gpu_check.py wheels [--dest .gpu-wheels]      # here: pip download (Python 3.12 wheels)
    python bench/gpu_check.py run [--out reports/gpu-check]    # on the GPU machine

``wheels`` downloads, for CPython 3.12 on x86-64 Linux and without dependencies (the GPU machine
brings torch with CUDA; nothing may pull another torch), the packages the engine imports besides
torch: megatron-core (the pinned release), numpy, packaging, PyYAML, tqdm, einops, psutil. The folder is
ignored by git; carry it to the GPU machine.

``run`` installs the missing ones from that folder into ``.gpu-wheels/site`` (``pip install
--no-index --no-deps --target``: no registry, no change to the machine's site-packages), then
re-executes itself with that folder on ``PYTHONPATH`` and checks, on ``cuda:0``:

1. a ~350M model (``configs/models/small-350m.yaml`` at seq 1024) in fp32 and in bf16, each with
   and without the distributed optimizer: 6 steps, finite losses, bf16 within 2% of fp32 at every
   step (same batches, same initial weights);
2. save -> resume (bf16, both optimizers): the resumed run's losses at steps 4..6 equal the
   uninterrupted run's (relative 1e-3: flash-attention backward kernels are not bit-deterministic);
3. growth of the bf16 checkpoint (``training.orchestration.grow.grow_checkpoint``, what ``flm grow`` runs) and 3
   steps of the grown model, twice: MSG on FFN width and depth (24 -> 28 layers), and MSG on the
   hidden size with its heads and FFN (1024 -> 1536, 16 -> 24 heads: FLM-101B's 16B -> 51B step, x1.8
   there). Each is verified as a staged run verifies its transitions at scale
   (``training.orchestration.transition``: the old trainer's loss on the verification batch against
   the grown trainer's, within the engine's bf16 tolerance) and carries the fp32 master weights bit
   for bit (checkpoint and the new optimizer's main parameters);
4. a ~1.3B model in bf16 (24 x 2048, seq 2048, micro-batch 4) for a timed window of 10 steps after
   3 warm-up steps: tokens/s, TFLOP/s per GPU and MFU (``training.model_size.flops_per_token`` and the
   device's peak from ``training.engine.metrics.PEAK_TFLOPS``).

It prints one line per check and a summary, writes ``<out>/gpu-check.json``, and exits non-zero if
a check failed. Budget: well under 8 minutes on one H100/H200 (the 350M checkpoints are removed as
soon as they are used).
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: (import name, pip requirement) of what the engine needs besides torch
PACKAGES = [
    ("megatron.core", "megatron-core==0.16.1"),
    ("numpy", "numpy"),
    ("packaging", "packaging"),
    ("yaml", "pyyaml"),
    ("tqdm", "tqdm"),
    ("einops", "einops"),
    ("psutil", "psutil"),  # megatron's checkpoint writers import it undeclared; without it a save hangs
]
DEFAULT_WHEELS = REPO / ".gpu-wheels"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


# ------------------------------------------------------------------------------------- wheels
def collect_wheels(dest: Path) -> int:
    """``pip download`` the wheels for CPython 3.12 (run where a registry is reachable)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--python-version",
        "3.12",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--no-deps",
        "-d",
        str(dest),
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += [req for _, req in PACKAGES]
    print("+", " ".join(cmd), flush=True)
    code = subprocess.call(cmd)
    if code == 0:
        wheels = sorted(p.name for p in dest.glob("*.whl"))
        size = sum(p.stat().st_size for p in dest.glob("*.whl")) / 2**20
        print(f"{len(wheels)} wheels, {size:.1f} MiB in {dest}:\n  " + "\n  ".join(wheels))
    return code


def install_missing(wheels: Path) -> Path:
    """Install the packages this Python lacks from ``wheels`` into ``wheels/site``; returns it."""
    site = wheels / "site"
    missing = [
        req
        for mod, req in PACKAGES
        if importlib.util.find_spec(mod.split(".")[0]) is None
        or (mod == "megatron.core" and importlib.util.find_spec(mod) is None)
    ]
    if missing:
        if not any(wheels.glob("*.whl")):
            raise SystemExit(
                f"missing {missing} and no wheels in {wheels}: run `make gpu-wheels` on a machine "
                "with a package registry and carry the folder here"
            )
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(wheels),
            "--target",
            str(site),
            "--upgrade",
            *missing,
        ]
        print("+", " ".join(cmd), flush=True)
        subprocess.check_call(cmd)
    return site


# ------------------------------------------------------------------------------------- checks
def _model(path: str, **changes) -> list[str]:
    """``model.<key>=<value>`` overrides of the model config file ``path`` (under configs/) with ``changes``."""
    import yaml  # local: `wheels` and the installer run before PyYAML may be importable

    fields = {**yaml.safe_load((REPO / "configs" / path).read_text()), **changes}
    return [f"model.{k}={v}" for k, v in fields.items()]


#: (350M model, its grown FFN width and depth, its grown hidden size / heads / FFN, the ~1.3B model, micro-batch,
#: global batch) of the GPU run;
#: ``--smoke`` shrinks everything to run the same code on a CPU in seconds (tests/bench/test_gpu_check.py)
SHAPES = {
    "gpu": dict(
        small=dict(seq_length=1024),
        grown=(5120, 28),
        wide=dict(hidden_size=1536, num_attention_heads=24, ffn_hidden_size=6144),
        big=dict(num_layers=24, hidden_size=2048, ffn_hidden_size=8192, num_attention_heads=16, seq_length=2048),
        micro=4,
        batch=8,
    ),
    "smoke": dict(
        small=dict(
            num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, vocab_size=512, seq_length=64
        ),
        grown=(320, 3),
        wide=dict(hidden_size=96, num_attention_heads=6, ffn_hidden_size=384),
        big=dict(
            num_layers=2, hidden_size=128, ffn_hidden_size=512, num_attention_heads=4, vocab_size=512, seq_length=64
        ),
        micro=2,
        batch=4,
    ),
}
COMMON = [
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "train.eval_interval=100000",
    "train.eval_batches=1",
    "train.warmup_steps=2",
    "train.lr=3e-4",
    "train.min_lr=3e-5",
    "data.kind=mock",
]


class Checks:
    def __init__(self, out: Path):
        self.out = out
        self.results: list[dict] = []

    def record(self, name: str, ok: bool, **values) -> None:
        self.results.append({"check": name, "ok": bool(ok), **values})
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {shown}", flush=True)

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.results)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _changed_model(old, new) -> list[str]:
    """``model.<field>=<value>`` overrides for the fields of ModelConfig ``new`` that differ from ``old``."""
    import dataclasses  # local like run_checks' imports (this helper runs only there)

    return [f"model.{k}={v}" for k, v in dataclasses.asdict(new).items() if getattr(old, k) != v]


#: tensors whose fp32 masters the growth checks compare: an MLP input matrix (layers stacked on dim 0)
#: and the embedding; old entries sit in the leading block of every grown axis under MSG
MASTER_KEYS = ("decoder.layers.mlp.linear_fc1.weight", "embedding.word_embeddings.weight")


def _masters_carried(old_reader, new_reader) -> bool:
    """Whether the grown checkpoint's fp32 masters of ``MASTER_KEYS`` hold the old masters bit for bit in
    their leading block (layer 0 of stacked tensors: one layer in memory)."""
    import torch  # local: torch and the project load only in the re-executed process (run_checks)

    from training.checkpoint.logical import master_key, stored_master_key

    for key in MASTER_KEYS:
        stacked = key.startswith("decoder.layers.")
        old_key = stored_master_key(old_reader, old_reader.dtype, key)
        old = old_reader.read(old_key, 0, 1)[0] if stacked else old_reader.read(old_key)
        new = new_reader.read(master_key(key), 0, 1)[0] if stacked else new_reader.read(master_key(key))
        if old.dtype != torch.float32 or not torch.equal(new[tuple(slice(0, n) for n in old.shape)], old):
            return False
    return True


def _main_params_carried(trainer, old_reader) -> bool:
    """Whether the trainer's mixed-precision optimizer (one process) holds the old fp32 masters of
    ``MASTER_KEYS`` bit for bit in its main parameters' leading block, after ``init_from`` a grown
    checkpoint: the masters were loaded, not re-derived from the bf16 weights."""
    import torch  # local: torch and the project load only in the re-executed process (run_checks)

    from training.checkpoint.logical import stored_master_key
    from training.engine.megatron_checkpoint import _float16_main_params, unwrap_ddp

    chunk = unwrap_ddp(trainer.model[0])
    mains = _float16_main_params(trainer.optimizer)
    params = {
        MASTER_KEYS[0]: chunk.decoder.layers[0].mlp.linear_fc1.weight,
        MASTER_KEYS[1]: chunk.embedding.word_embeddings.weight,
    }
    for key, param in params.items():
        stacked = key.startswith("decoder.layers.")
        old_key = stored_master_key(old_reader, old_reader.dtype, key)
        old = old_reader.read(old_key, 0, 1)[0] if stacked else old_reader.read(old_key)
        main = mains[id(param)].view(param.shape).cpu()
        if not torch.equal(main[tuple(slice(0, n) for n in old.shape)], old):
            return False
    return True


def run_checks(out: Path, smoke: bool = False, timeout: float = 0) -> int:
    """Run the checks; past ``timeout`` seconds (0: never) dump every thread's stack and exit 1, so a hung
    check (a dead checkpoint writer, a collective that never returns) shows where it hung instead of
    silently spending the GPU session."""
    if timeout:
        faulthandler.dump_traceback_later(timeout, exit=True)
    # local imports: they need the packages install_missing put on PYTHONPATH of this re-executed process
    import dataclasses

    import torch

    import training.engine  # noqa: F401  (no CPU bridge on CUDA; megatron loads here)
    from growth.plan import plan_for
    from training.checkpoint.dcp_io import TensorReader
    from training.config import load_run_config
    from training.data.source import MockSource
    from training.engine.metrics import peak_tflops_of
    from training.engine.parallel import teardown
    from training.engine.trainer import Trainer
    from training.model_size import flops_per_token
    from training.orchestration import transition
    from training.orchestration.grow import grow_checkpoint

    if not torch.cuda.is_available() and not smoke:
        raise SystemExit("gpu-check needs a CUDA GPU (torch.cuda.is_available() is False)")
    shape = SHAPES["smoke" if smoke else "gpu"]
    small = _model("models/small-350m.yaml", **shape["small"])
    ffn_new, layers_new = shape["grown"]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke run)"
    peak = peak_tflops_of(device)
    print(
        f"device: {device} (peak {peak} TFLOP/s bf16 dense), torch {torch.__version__}, CUDA {torch.version.cuda}",
        flush=True,
    )
    checks = Checks(out)
    t_start = time.perf_counter()

    def trainer(name: str, *overrides: str) -> Trainer:
        cfg = load_run_config(
            REPO / "configs" / "runs" / "tiny.yaml", [*small, *COMMON, f"output_dir={work / name}", *overrides]
        )
        return Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0))

    def steps(t: Trainer, n: int) -> list[float]:
        losses = [t.step().loss for _ in range(n)]
        sync()
        return losses

    def release() -> None:
        """Return the memory of trainers the caller has just deleted."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    batch = [f"train.global_batch_size={shape['batch']}", f"train.micro_batch_size={shape['micro']}", "train.steps=6"]
    # 1 + 2: precisions x optimizers, save -> resume (bf16)
    fp32 = None
    grow_src = None
    for precision in ("fp32", "bf16"):
        for distopt in (False, True):
            name = f"350m-{precision}-{'distopt' if distopt else 'plain'}"
            t0 = time.perf_counter()
            run = trainer(
                name, *batch, f"train.precision={precision}", f"parallel.distributed_optimizer={str(distopt).lower()}"
            )
            first = steps(run, 3)
            path = run.save() if precision == "bf16" else None
            if path is not None and not distopt:  # what growth must preserve, as a staged run records it
                grow_src = (path, transition.record_reference(run, work / "reference", rank0=True))
            losses = first + steps(run, 3)
            finite = all(math.isfinite(x) for x in losses)
            if precision == "fp32" and not distopt:
                fp32 = losses
            worst = max(_rel(a, b) for a, b in zip(losses, fp32))
            checks.record(
                f"train {name}",
                finite and worst <= (2e-2 if precision == "bf16" else 1e-4),
                losses=losses,
                max_rel_vs_fp32=worst,
                seconds=time.perf_counter() - t0,
            )
            if path is not None:
                del run
                release()
                resumed = trainer(
                    name + "-resumed",
                    *batch,
                    f"train.precision={precision}",
                    f"parallel.distributed_optimizer={str(distopt).lower()}",
                )
                resumed.load(path)
                again = steps(resumed, 3)
                worst = max(_rel(a, b) for a, b in zip(again, losses[3:]))
                checks.record(f"resume {name}", worst <= 1e-3, losses=again, expected=losses[3:], max_rel=worst)
                del resumed
                release()
                if distopt:
                    shutil.rmtree(path.parent, ignore_errors=True)
            else:
                del run
                release()

    # 3: growth of the bf16 checkpoint, a few steps after it: FFN + depth, then the hidden size (16B -> 51B)
    src, reference = grow_src
    old_cfg = load_run_config(REPO / "configs" / "runs" / "tiny.yaml", small).model
    wide = shape["wide"]
    growths = [
        (
            f"msg ffn {old_cfg.ffn_hidden_size}->{ffn_new}, depth {old_cfg.num_layers}->{layers_new}",
            dataclasses.replace(old_cfg, ffn_hidden_size=ffn_new, num_layers=layers_new),
            {"ffn": "msg", "depth": "msg"},
        ),
        (
            f"msg hidden {old_cfg.hidden_size}->{wide['hidden_size']}, heads {old_cfg.num_attention_heads}->"
            f"{wide['num_attention_heads']}, ffn {old_cfg.ffn_hidden_size}->{wide['ffn_hidden_size']}",
            dataclasses.replace(old_cfg, kv_channels=old_cfg.head_dim, **wide),
            {"hidden": "msg", "heads": "msg", "ffn": "msg"},
        ),
    ]
    for i, (what, new_cfg, operators) in enumerate(growths):
        plan = plan_for(old_cfg, new_cfg, operators, ramp={"steps": 20}, depth={"placement": "stack", "init": "copy"})
        t0 = time.perf_counter()
        dst = work / f"grown-{i}"
        # the float64 reference check holds a layer in float64 on one process: a staged run skips it at
        # scale (REFERENCE_CHECK_MAX_PARAMS) and relies on the engine's check, which runs below
        grow_checkpoint(src, dst, plan, run_verify=False)
        grow_s = time.perf_counter() - t0
        carried = _masters_carried(TensorReader(src), TensorReader(dst))
        grown = trainer(f"grown-{i}", *batch, "train.precision=bf16", *_changed_model(old_cfg, new_cfg))
        grown.init_from(dst)
        carried = carried and _main_params_carried(grown, TensorReader(src))
        (work / f"check-{i}").mkdir()
        record = transition.check(grown, reference, exact=False, stage_dir=work / f"check-{i}", rank0=True)
        after = steps(grown, 3)
        checks.record(
            f"grow 350m bf16 ({what}) + 3 steps",
            record["preserved"] and carried and all(math.isfinite(x) for x in after),
            loss_before=record["old_loss"],
            loss_after=record["new_loss"],
            rel=record["rel_dloss"],
            tolerance=record["tolerance"],
            fp32_masters_carried=carried,
            losses_after=after,
            grow_seconds=grow_s,
        )
        del grown
        release()
        shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)

    # 4: ~1.3B bf16 timed window
    cfg = load_run_config(
        REPO / "configs" / "runs" / "tiny.yaml",
        [
            *_model("models/small-350m.yaml", **shape["big"]),
            *COMMON,
            f"output_dir={work / '1b'}",
            "train.precision=bf16",
            f"train.global_batch_size={shape['batch']}",
            f"train.micro_batch_size={shape['micro']}",
            "train.steps=100",
        ],
    )
    big = Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0))
    params = sum(p.numel() for m in big.model for p in m.parameters())
    steps(big, 3)
    t0 = time.perf_counter()
    timed = steps(big, 10)
    dt = (time.perf_counter() - t0) / 10
    tokens_s = cfg.train.global_batch_size * cfg.model.seq_length / dt
    tflops = tokens_s * flops_per_token(cfg.model) / 1e12
    mfu = tflops / peak if peak else None
    checks.record(
        f"{params / 1e9:.2f}B bf16 timed window",
        all(math.isfinite(x) for x in timed),
        params=params,
        step_s=dt,
        tokens_per_s=tokens_s,
        tflops_per_gpu=tflops,
        mfu=mfu,
        mfu_goal_met=None if mfu is None else mfu >= 0.45,
    )
    del big
    release()
    teardown()

    total = time.perf_counter() - t_start
    summary = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_tflops": peak,
        "seconds": total,
        "ok": checks.ok,
        "checks": checks.results,
    }
    faulthandler.cancel_dump_traceback_later()
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2))
    print(
        f"gpu-check: {'all checks passed' if checks.ok else 'FAILED'} in {total:.0f} s; "
        f"results in {out / 'gpu-check.json'}",
        flush=True,
    )
    return 0 if checks.ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="collect the wheels the GPU machine lacks (needs a package registry)")
    w.add_argument("--dest", type=Path, default=DEFAULT_WHEELS)
    r = sub.add_parser("run", help="run the checks on this machine's GPU")
    r.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS)
    r.add_argument("--out", type=Path, default=REPO / "reports" / "gpu-check")
    r.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    r.add_argument(
        "--timeout",
        type=float,
        default=510,
        help="after this many seconds print every thread's stack and exit 1 (default 510: inside one 600 s "
        "device call; 0 = none)",
    )
    r.add_argument("--smoke", action="store_true", help="tiny shapes, CPU allowed: the same code in seconds (tests)")
    args = ap.parse_args()
    if args.cmd == "wheels":
        return collect_wheels(args.dest)
    if args.in_process:
        return run_checks(args.out, smoke=args.smoke, timeout=args.timeout)
    # --smoke takes this path too: a bare Python (torch only) runs the whole GPU-machine procedure on a CPU
    site = install_missing(args.wheels)
    env = dict(os.environ)
    if site.is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    again = [sys.executable, __file__, "run", "--in-process", "--out", str(args.out), "--timeout", str(args.timeout)]
    return subprocess.call(again + (["--smoke"] if args.smoke else []), env=env)


if __name__ == "__main__":
    sys.exit(main())
