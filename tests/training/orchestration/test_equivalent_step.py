"""The equivalent-step entry of a grown stage estimated from the previous stage's validation curve
(training/orchestration/equivalent_step.py), and a staged run that enters the schedule there."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.staged_run import write_staged_run
from tests.helpers import flm, read_metrics
from training.model_size import non_embedding_params
from training.orchestration import equivalent_step
from training.orchestration.stage_plans import load_run

#: configs/runs/tiny_staged.yaml, smaller, with a validation curve and the equivalent-step LR schedule
RUN = (
    "name=eq",
    "train.micro_batch_size=8",
    "train.warmup_steps=2",
    "train.eval_interval=2",
    "train.eval_batches=1",
    "lr_schedule={kind: equivalent_step, warmup_tokens: 1024}",
    "checkpoint={save_interval: 0, keep_last: 1}",
    "stages.0.model={num_layers: 1, hidden_size: 32, ffn_hidden_size: 64, num_attention_heads: 2, vocab_size: 256, "
    "seq_length: 32}",
    "stages.0.tokens=5120",
    "stages.1.model={num_layers: 2, hidden_size: 64, ffn_hidden_size: 128, num_attention_heads: 4, vocab_size: 256, "
    "seq_length: 32}",
    "stages.1.tokens=2048",
)


def law(d, c, k, beta):
    return c + k * d**-beta


def test_fit_recovers_a_known_power_law():
    tokens = [4096.0 * n for n in range(1, 30)]
    c, k, beta = equivalent_step.fit_power_law(tokens, [law(d, 2.5, 40.0, 0.35) for d in tokens])
    assert (c, k, beta) == pytest.approx((2.5, 40.0, 0.35), rel=1e-4)
    assert equivalent_step.solve_tokens(2.5, 40.0, 0.35, law(50_000.0, 2.5, 40.0, 0.35)) == pytest.approx(50_000.0)
    assert equivalent_step.solve_tokens(2.5, 40.0, 0.35, 2.4) == math.inf


def write_curve(cfg, c=2.5, k=40.0, beta=0.35, every=2):
    tps = cfg.train.global_batch_size * cfg.model.seq_length
    Path(cfg.output_dir).mkdir(parents=True)
    with open(Path(cfg.output_dir) / "metrics.jsonl", "w") as f:
        for step in range(1, cfg.train.steps + 1):
            record = {"step": step, "loss": 9.0}
            if step % every == 0:
                record["val_loss"] = law(step * tps, c, k, beta)
            f.write(json.dumps(record) + "\n")


def test_entry_solves_the_grown_shapes_curve_and_is_kept(tmp_path):
    path = write_staged_run(tmp_path / "eq.yaml", tmp_path / "eq", *RUN)
    run = load_run(path, [])
    prev = run.stages[0].config
    write_curve(prev)
    stage_dir = tmp_path / "eq" / "stage1-g"
    got = equivalent_step.entry_tokens(run.config, 1, prev, run.stages[1].config.model, stage_dir)
    record = json.loads((stage_dir / "equivalent_step.json").read_text())
    tps = prev.train.global_batch_size * prev.model.seq_length
    d_prev = prev.train.steps * tps
    floor = 2.5 * (non_embedding_params(prev.model) / non_embedding_params(run.stages[1].config.model)) ** 0.076
    want = (40.0 / (law(d_prev, 2.5, 40.0, 0.35) - floor)) ** (1 / 0.35)
    assert got == record["equivalent_tokens"] and got == pytest.approx(want, rel=1e-3)
    assert 0 < got < d_prev  # the larger shape needs fewer tokens for the same loss
    assert run.stages[1].entered_at(got).config.train.schedule_offset_steps == got // tps
    (tmp_path / "eq" / "stage0-s" / "metrics.jsonl").write_text("")  # the record is read back, not refitted
    assert equivalent_step.entry_tokens(run.config, 1, prev, run.stages[1].config.model, stage_dir) == got


def test_too_few_points_name_the_fix(tmp_path):
    path = write_staged_run(tmp_path / "eq.yaml", tmp_path / "eq", *RUN)
    run = load_run(path, [])
    prev = run.stages[0].config
    write_curve(prev, every=10)
    with pytest.raises(equivalent_step.EquivalentStepError, match="lower train.eval_interval or give stages"):
        equivalent_step.entry_tokens(run.config, 1, prev, run.stages[1].config.model, tmp_path / "eq" / "stage1-g")
    assert (
        equivalent_step.entry_tokens(
            load_run(path, ["stages.1.growth.equivalent_tokens=512"]).config,
            1,
            prev,
            run.stages[1].config.model,
            tmp_path / "x",
        )
        is None
    )


def test_staged_run_enters_the_schedule_at_the_estimate(tmp_path):
    path = write_staged_run(tmp_path / "eq.yaml", tmp_path / "eq", *RUN)
    flm("train", str(path))
    record = json.loads((tmp_path / "eq" / "stage1-g" / "equivalent_step.json").read_text())
    run = load_run(path, [])
    train = run.stages[1].entered_at(record["equivalent_tokens"]).config.train
    assert (
        train.schedule_offset_steps
        == record["equivalent_tokens"] // 256
        < run.stages[1].config.train.schedule_offset_steps
    )
    first = read_metrics(tmp_path / "eq" / "stage1-g")[0]
    n = train.schedule_offset_steps + 1
    t = (n - train.warmup_steps) / (train.lr_decay_steps - train.warmup_steps)
    assert first["lr"] == pytest.approx(train.min_lr + (train.lr - train.min_lr) * 0.5 * (1 + math.cos(math.pi * t)))
