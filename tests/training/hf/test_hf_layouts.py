"""Checkpoints saved under TP2 and under PP2 (real 2-process gloo runs of the Trainer, one optimizer
step on random non-trivial weights) export, for each architecture and as the project's own FLM
code, to transformers models whose logits equal the project model's: float32 within
1e-5·(1 + max|logit|), float64 exports within 1e-10. One torchrun launch saves all of them (process start-up dominates on a 2-core box)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.training.hf.hf_helpers import ARCH_OF, random_state, variant, write_checkpoint
from training.config_base import to_dict
from training.hf.compare import compare, load_hf_model, random_tokens

LAYOUTS = {"tp2": {"tp": 2}, "pp2": {"pp": 2}}
#: one variant per architecture, all with GQA (TP2 splits the query groups), tied and untied, with biases
LAYOUT_VARIANTS = ["llama-gqa-untied", "neox-gqa-tied-bias", "stablelm-gqa-untied"]
WORKER = Path(__file__).with_name("workers") / "save_layouts.py"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{(variant, layout): checkpoint root} written by 2-process runs."""
    from training.local_launch import free_port

    root = tmp_path_factory.mktemp("layouts")
    jobs, out = [], {}
    for i, name in enumerate(LAYOUT_VARIANTS):
        cfg = variant(name)
        src = write_checkpoint(root / f"{name}-src", cfg, random_state(cfg, seed=10 + i))
        for layout, parallel in LAYOUTS.items():
            out[name, layout] = root / f"{name}-{layout}"
            jobs.append({"src": str(src), "out": str(out[name, layout]), "model": to_dict(cfg), "parallel": parallel})
    spec = root / "jobs.json"
    spec.write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        str(WORKER),
        str(spec),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["auto", "flm"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", LAYOUT_VARIANTS)
def test_export_of_sharded_checkpoint_matches(saved, name, layout, architecture, tmp_path):
    from training.checkpoint import read_meta, resolve
    from training.checkpoint.logical import read_logical
    from training.hf.export import export_checkpoint

    ckpt = resolve(saved[name, layout] / "checkpoints")
    meta = read_meta(ckpt)
    assert meta["layout"] == {"tp": 2, "pp": 1, "dp": 1} if layout == "tp2" else {"tp": 1, "pp": 2, "dp": 1}
    assert meta["has_optimizer"] and meta["step"] == 1
    cfg = variant(name)
    params, _ = read_logical(ckpt)
    state = {k: v for k, v in params.items() if not k.startswith("optimizer.")}
    for dtype in (torch.float32, torch.float64):
        out = tmp_path / f"hf-{dtype}"
        report = export_checkpoint(
            ckpt, out, no_tokenizer=True, dtype=str(dtype).replace("torch.", ""), architecture=architecture
        )
        assert report.architecture == (ARCH_OF[name.split("-")[0]] if architecture == "auto" else "FLMForCausalLM")
        result = compare(
            cfg,
            {k: v.to(dtype) for k, v in state.items()},
            load_hf_model(out, dtype),
            random_tokens(cfg.vocab_size, cfg.seq_length, batch=3, seed=2),
        )
        assert result.within, result.summary()
        assert result.tolerance == (1e-5 if dtype == torch.float32 else 1e-10)
