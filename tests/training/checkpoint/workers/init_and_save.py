"""Worker (run under torchrun by tests): init a Trainer from a checkpoint and save it again, under
each of several layouts in turn, in one launch (each torchrun launch costs seconds of imports per
process; ``setup_layout`` re-initialises megatron's groups for each layout, as a staged run does).

python init_and_save.py SRC_CKPT JOBS_JSON    # JOBS_JSON: {"OUT_ROOT": [overrides...], ...}
"""

import json
import sys
from pathlib import Path

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from training.config import load_run_config
from training.data.source import MockSource
from training.engine.parallel import teardown
from training.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[4]


def main() -> None:
    src, jobs = sys.argv[1], json.loads(sys.argv[2])
    for out, overrides in jobs.items():
        cfg = load_run_config(
            REPO / "configs" / "runs" / "tiny.yaml",
            ["logging.progress_bar=false", "logging.tensorboard=false", *overrides],
        )
        trainer = Trainer(cfg, train_source=MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0))
        trainer.init_from(Path(src))
        trainer.save(Path(out))
    teardown()


if __name__ == "__main__":
    main()
