"""What was verified is what gets trained: a grown stage trains the model its transition produced
(fields the operators derive included), starting from the loss the transition's check verified,
for every exact operator on every dimension; stage sections that disagree are refused at load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.staged_run import write_staged_run
from tests.helpers import REPO
from training.config_base import ConfigError
from training.data.source import MockSource
from training.engine.factory import make_trainer
from training.engine.parallel import init_process_group, teardown
from training.orchestration.grow import verify_tokens
from training.orchestration.model_check import check_same_model
from training.orchestration.stage_plans import load_run
from training.orchestration.stages import grow_into, run_stages

SMALL = (
    "num_layers: 2, hidden_size: 32, ffn_hidden_size: 64, num_attention_heads: 4, kv_channels: 8, "
    "vocab_size: 128, make_vocab_size_divisible_by: 32, seq_length: 32, normalization: RMSNorm, "
    "activation: swiglu, bias: false, tie_embeddings: false"
)
GROWN = {  # one dimension grown per case (heads keep kv_channels 8, so the projection widths grow)
    "hidden": SMALL.replace("hidden_size: 32", "hidden_size: 64"),
    "ffn": SMALL.replace("ffn_hidden_size: 64", "ffn_hidden_size: 128"),
    "heads": SMALL.replace("num_attention_heads: 4", "num_attention_heads: 8"),
    "depth": SMALL.replace("num_layers: 2", "num_layers: 4"),
}
CASES = [(dim, op) for dim in ("hidden", "ffn", "heads") for op in ("msg", "zero", "clone")] + [
    ("depth", "msg"),
    ("depth", "zero"),
]

#: configs/runs/tiny_staged.yaml with the block variant SMALL (RMSNorm, SwiGLU, no biases, untied) grown
#: along one dimension by one operator; every case's stage 0 is the same run
RUN = (
    "name=exact",
    "data.seed=5",
    "train={global_batch_size: 4, micro_batch_size: 2, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 1, eval_interval: 1000}",
    "checkpoint={save_interval: 0}",
    "stages.0.name=small",
    "stages.0.tokens=512",
    "stages.1.tokens=256",
)


def write_run(tmp_path, dim="hidden", op="msg", grown=None, name=None, small=SMALL):
    return write_staged_run(
        tmp_path / f"{dim}-{op}.yaml",
        tmp_path / "run",
        *RUN,
        f"stages.0.model={{{small}}}",
        f"stages.1.name={name or f'{dim}-{op}'}",
        f"stages.1.model={{{grown or GROWN[dim]}}}",
        f"stages.1.growth={{operators: {{{dim}: {op}}}, ramp: {{steps: 4}}}}",
    )


@pytest.fixture(scope="module")
def trained_small(tmp_path_factory):
    """Stage 0 trained once (its final checkpoint is shared by every case: same run directory)."""
    tmp = tmp_path_factory.mktemp("stages")
    run_stages(load_run(write_run(tmp)), only_stage=0)
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("dim,op", CASES, ids=[f"{d}-{o}" for d, o in CASES])
def test_first_step_of_a_grown_stage_starts_from_the_verified_loss(trained_small, dim, op):
    run = load_run(write_run(trained_small, dim, op))
    init_process_group()
    try:
        grown = grow_into(run, 1)
        record = json.loads((grown.parent / "growth.json").read_text())
        assert record["exact"] and record["preserved"], record
        cfg = run.stages[1].config
        meta = json.loads((grown / "flm_checkpoint.json").read_text())
        check_same_model(meta["config"]["model"], cfg.model, grown)  # the trained model is the grown one
        source = MockSource(cfg.model.vocab_size, cfg.model.seq_length, 0)
        trainer = make_trainer(cfg, train_source=source, valid_source=source)
        trainer.init_from(grown)
        plan_seed = meta["growth"]["plan"]["seed"]
        tokens = verify_tokens(cfg.model.vocab_size, cfg.model.seq_length, seed=plan_seed).numpy().astype(np.int64)
        loss = trainer._forward_only_loss(trainer._micro_batches(tokens))
        assert loss == pytest.approx(record["verify"]["new_loss"], rel=2e-5), (loss, record["verify"])
        del trainer
    finally:
        teardown()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_staged_mup_run_trains_the_verified_grown_model(tmp_path, tied):
    """μP (base width 32, attention multiplier 2, output multiplier 2), hidden 32 -> 64 by msg: the
    grown stage is the μP model of width 64 (m 1 -> 2; readout x 2 in the weights, tied: input
    multiplier / 2), its config is the one the growth verified, its first forward gives the verified
    loss, its hidden matrices train at lr / 2, and the stage trains on."""
    from training.config import MuPConfig
    from training.config_base import to_dict

    small = SMALL.replace("tie_embeddings: false", f"tie_embeddings: {str(tied).lower()}")
    small += ", output_multiplier: 2.0, mup: {base_width: 32, attention_multiplier: 2.0}"
    run = load_run(write_run(tmp_path, grown=small.replace("hidden_size: 32", "hidden_size: 64"), small=small))
    cfg = run.stages[1].config
    m = cfg.model
    assert m.mup == MuPConfig(base_width=32, attention_multiplier=2.0) and m.width_multiplier == 2.0
    assert m.output_multiplier == 2.0 and m.readout_multiplier == 1.0
    assert m.input_multiplier == (0.5 if tied else 1.0)
    run_stages(run, only_stage=0)
    init_process_group()
    try:
        grown = grow_into(run, 1)
        record = json.loads((grown.parent / "growth.json").read_text())
        assert record["exact"] and record["preserved"], record
        meta = json.loads((grown / "flm_checkpoint.json").read_text())
        assert meta["config"]["model"] == to_dict(m)  # what was verified is what the stage trains
        check_same_model(meta["config"]["model"], m, grown)
        source = MockSource(m.vocab_size, m.seq_length, 0)
        trainer = make_trainer(cfg, train_source=source, valid_source=source)
        trainer.init_from(grown)
        tokens = verify_tokens(m.vocab_size, m.seq_length, seed=meta["growth"]["plan"]["seed"]).numpy()
        loss = trainer._forward_only_loss(trainer._micro_batches(tokens.astype(np.int64)))
        assert loss == pytest.approx(record["verify"]["new_loss"], rel=2e-5), (loss, record["verify"])
        hidden = [g for g in trainer.optimizer.param_groups if g["lr_mult"] != 1.0]
        assert [(g["lr_mult"], g["wd_mult"], g["max_lr"]) for g in hidden] == [(0.5, 2.0, cfg.train.lr / 2)]
        del trainer
    finally:
        teardown()
    run_stages(run, only_stage=1)
    records = [json.loads(line) for line in (run.stages[1].dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r and r.get("step")]
    assert len(train) == cfg.train.steps and all(np.isfinite(r["loss"]) for r in train)


def test_derived_fields_come_from_the_growth(tmp_path):
    """hidden clone halves output_multiplier, zero-padding an RMSNorm hidden size scales norm_eps:
    the stage trains those values although its model section leaves the run's."""
    clone = load_run(write_run(tmp_path, "hidden", "clone")).stages[1].config.model
    assert clone.output_multiplier == 0.5 and clone.hidden_size == 64
    zero = load_run(write_run(tmp_path, "hidden", "zero")).stages[1].config.model
    assert zero.norm_eps == pytest.approx(1e-5 * 32 / 64) and zero.output_multiplier == 1.0


def test_mup_derives_no_output_multiplier(tmp_path):
    """Under μP a grown model keeps output_multiplier (clone included: the 1/m absorbs the clone's
    factor), so a stage section that changes it is refused; so is one that drops model.mup."""
    small = SMALL + ", mup: {base_width: 32}"
    clone = (
        load_run(write_run(tmp_path, "hidden", "clone", grown=GROWN["hidden"] + ", mup: {base_width: 32}", small=small))
        .stages[1]
        .config.model
    )
    assert clone.output_multiplier == 1.0 and clone.readout_multiplier == 0.5
    for extra, key in ((", mup: {base_width: 32}, output_multiplier: 0.5", "output_multiplier"), ("", "mup")):
        with pytest.raises(ConfigError) as info:
            load_run(write_run(tmp_path, grown=GROWN["hidden"] + extra, small=small))
        assert info.value.key == f"stages[1].model.{key}"


@pytest.mark.parametrize(
    "change,key",
    [
        ("activation: swiglu", "activation"),
        ("rotary_base: 500", "rotary_base"),
        ("input_multiplier: 2.0", "input_multiplier"),
        ("seq_length: 64", "seq_length"),
    ],
)
def test_a_stage_section_that_growth_cannot_produce_is_refused(tmp_path, change, key):
    grown = GROWN["hidden"]
    field = change.split(":")[0]
    if field in grown:
        grown = ", ".join(p for p in grown.split(", ") if not p.startswith(field))
    if change == "activation: swiglu":
        change = "activation: gelu"
    with pytest.raises(ConfigError) as info:
        load_run(write_run(tmp_path, grown=f"{grown}, {change}"))
    assert info.value.key == f"stages[1].model.{key}"
    assert str(info.value).count("\n") == 0


def test_checkpoint_of_another_function_is_refused(tmp_path):
    """check_same_model compares every function-defining field (multipliers, eps, xPos, rotary base)."""
    from training.checkpoint import CheckpointError
    from training.config import ModelConfig
    from training.config_base import to_dict

    ours = ModelConfig()
    for field, value in (
        ("output_multiplier", 0.5),
        ("norm_eps", 1e-6),
        ("position_embedding", "xpos"),
        ("rotary_base", 500),
        ("xpos_scale_base", 64.0),
        ("input_multiplier", 2.0),
    ):
        theirs = dict(to_dict(ours), **{field: value})
        with pytest.raises(CheckpointError, match=f"model.{field}="):
            check_same_model(theirs, ours, tmp_path)
    check_same_model(dict(to_dict(ours), seq_length=4096, hidden_dropout=0.1), ours, tmp_path)  # not the function


def test_shipped_runs_load():
    for path in sorted((REPO / "configs" / "runs").glob("*.yaml")):
        load_run(path)
