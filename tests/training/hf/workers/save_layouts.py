"""Worker (run under torchrun by test_hf_layouts.py): for each job, build a Trainer under the job's
layout, initialise it from a logical checkpoint, train one step and save (sharded) checkpoints.

    python save_layouts.py JOBS.json

JOBS.json: a list of {"src": logical checkpoint, "out": output_dir, "model": {...}, "parallel": {...}}.
"""

import json
import sys
from pathlib import Path

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from training.config import RunConfig
from training.config_base import from_dict
from training.data.source import MockSource
from training.engine.parallel import teardown
from training.engine.trainer import Trainer


def main() -> None:
    for job in json.loads(Path(sys.argv[1]).read_text()):
        cfg = from_dict(
            RunConfig,
            {
                "output_dir": job["out"],
                "model": job["model"],
                "parallel": job["parallel"],
                "train": {"global_batch_size": 4, "micro_batch_size": 2, "eval_batches": 1, "warmup_steps": 0},
                "logging": {"progress_bar": False, "tensorboard": False},
            },
        )
        m = cfg.model
        trainer = Trainer(
            cfg,
            train_source=MockSource(m.vocab_size, m.seq_length, 0),
            valid_source=MockSource(m.vocab_size, m.seq_length, 1),
        )
        trainer.init_from(Path(job["src"]))
        trainer.fit(until_step=1)  # saves <out>/checkpoints/step_0000001 under this layout
    teardown()


if __name__ == "__main__":
    main()
