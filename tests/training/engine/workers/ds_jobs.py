"""Worker (run under torchrun by test_ds_trainer.py): several DeepSpeed-engine runs in one launch
(each torchrun launch costs 10-20 s of imports on the test machine).

    python ds_jobs.py ROOT train    # ZeRO 1/2/3 from scratch, then each resumed from another stage's step 3
    python ds_jobs.py ROOT grown    # ZeRO 1/2/3 started from ROOT/grown (saved at step 0, then trained),
                                    # and from the megatron engine's step-3 checkpoint

Runs go through the same ``make_trainer`` / ``run_sources`` as ``flm train``; each writes its
``metrics.jsonl`` and checkpoints under ROOT/<name>.
"""

import sys
from pathlib import Path

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from training.config import load_run_config
from training.data.build import run_sources
from training.engine.factory import make_trainer
from training.engine.parallel import teardown

REPO = Path(__file__).resolve().parents[4]
COMMON = [
    "engine=deepspeed",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "train.eval_interval=1000",
    "checkpoint.keep_last=5",
]
GROWN = ["model.num_layers=4", "model.hidden_size=128", "model.ffn_hidden_size=512", "model.num_attention_heads=8"]


def trainer(root: Path, name: str, overrides: list[str]):
    cfg = load_run_config(REPO / "configs" / "runs" / "tiny.yaml", [*COMMON, f"output_dir={root / name}", *overrides])
    train_src, valid_src = run_sources(cfg)
    return make_trainer(cfg, train_source=train_src, valid_source=valid_src)


def main() -> None:
    root, job = Path(sys.argv[1]), sys.argv[2]
    if job == "train":
        for z in (1, 2, 3):
            trainer(
                root, f"zero{z}", [f"deepspeed.zero_stage={z}", "train.steps=6", "checkpoint.save_interval=3"]
            ).fit()
        for z in (1, 2, 3):
            t = trainer(root, f"resumed{z}", [f"deepspeed.zero_stage={z}", "train.steps=6"])
            t.load(root / f"zero{z % 3 + 1}" / "checkpoints" / "step_0000003")
            t.fit()
    elif job == "grown":
        for z in (1, 2, 3):
            t = trainer(root, f"big{z}", [f"deepspeed.zero_stage={z}", "train.steps=3", *GROWN])
            t.init_from(root / "grown")
            t.save(root / f"init{z}")
            t.fit()
        t = trainer(root, "from_megatron", ["deepspeed.zero_stage=3", "train.steps=1"])
        t.init_from(root / "megatron" / "checkpoints" / "step_0000003")
        t.fit()
    else:
        raise SystemExit(f"unknown job {job}")
    teardown()


if __name__ == "__main__":
    main()
