"""Worker (run under torchrun by tests): build the model under real layouts, write per-rank counts.

    python count_params.py OUT_DIR LAYOUT=overrides[,overrides...] [LAYOUT=...]

For each layout (a name and comma-separated overrides of configs/runs/tiny.yaml) every rank
initialises megatron's parallel_state for it (gloo), builds the model with training.engine.model.build
and writes OUT_DIR/<layout>.rank<r>.json: tp_rank, pp_rank and the parameter count per chunk.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from training.config import load_run_config
from training.engine.model.build import build_model, transformer_config
from training.engine.parallel import setup_layout, teardown

REPO = Path(__file__).resolve().parents[4]


def main() -> None:
    out, *layouts = sys.argv[1:]
    for spec in layouts:
        name, _, overrides = spec.partition("=")
        cfg = load_run_config(REPO / "configs" / "runs" / "tiny.yaml", [o for o in overrides.split(",") if o])
        layout = setup_layout(cfg.parallel, seed=1)
        chunks = build_model(cfg.model, transformer_config(cfg.model, cfg.parallel, bf16=False, gloo=True))
        record = {
            "tp_rank": layout.tp_rank,
            "pp_rank": layout.pp_rank,
            "chunk_params": [sum(p.numel() for p in c.parameters()) for c in chunks],
        }
        (Path(out) / f"{name}.rank{dist.get_rank()}.json").write_text(json.dumps(record))
    teardown()


if __name__ == "__main__":
    main()
