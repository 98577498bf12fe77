"""Config loading: includes, overrides, and a clear error for each kind of bad input."""

from __future__ import annotations

import pytest

from tests.helpers import REPO
from training.cli import main as flm_main
from training.config import load_run_config
from training.config_base import ConfigError
from training.orchestration.stage_plans import build_run, load_run

TINY = REPO / "configs" / "runs" / "tiny.yaml"
DRYRUN = REPO / "configs" / "runs" / "dryrun.yaml"


def test_includes_and_overrides_resolve():
    cfg = load_run_config(TINY, ["train.lr=3e-4", "parallel.tp=2", "model.normalization=RMSNorm"])
    assert cfg.train.lr == 3e-4 and cfg.parallel.tp == 2
    assert cfg.model.hidden_size == 64 and cfg.model.normalization == "RMSNorm"


@pytest.mark.parametrize(
    "override, key, hint",
    [
        (["model.hidden_sise=32"], "model.hidden_sise", "allowed keys here"),
        (["model.normalization=BatchNorm"], "model.normalization", "allowed values: 'LayerNorm', 'RMSNorm'"),
        (["model.hidden_size=abc"], "model.hidden_size", "expected an integer"),
        (["train.lr=fast"], "train.lr", "expected a number"),
        (["model.tie_embeddings=3"], "model.tie_embeddings", "true or false"),
        (["parallel.tp=3"], "model.num_attention_heads", "allowed tp values: [1, 2, 4]"),
        (["model.num_attention_heads=3"], "model.num_attention_heads", "not divisible"),
        (["model.num_query_groups=3"], "model.num_query_groups", "not divisible into 3 groups"),
        (["parallel.pp=3"], "model.num_layers", "pp=3"),
        (["train.global_batch_size=7"], "train.global_batch_size", "multiple of micro_batch_size"),
        (["train.min_lr=1.0"], "train.min_lr", "min_lr <= lr"),
        (["parallel.sequence_parallel=true"], "parallel.sequence_parallel", "needs tp >= 2"),
        (["train.steps=0"], "train.steps", "positive"),
        (["model=3"], "model", "expected a mapping"),
        (["model.mup.base_width=0"], "model.mup.base_width", "positive integer"),
        (["model.mup.attention_multiplier=-1"], "model.mup.attention_multiplier", "must be > 0"),
        (["parallel.timeout_minutes=0"], "parallel.timeout_minutes", "must be > 0 (minutes)"),
        (["parallel.timeout_minutes=soon"], "parallel.timeout_minutes", "expected a number"),
    ],
)
def test_invalid_values_name_the_key(override, key, hint):
    with pytest.raises(ConfigError) as info:
        load_run_config(TINY, override)
    assert info.value.key == key
    assert hint in str(info.value)
    assert str(TINY) in str(info.value)


def test_layout_must_fit_the_world_size():
    cfg = load_run_config(TINY, ["parallel.tp=2", "parallel.pp=2"])
    with pytest.raises(ConfigError, match="world size 6 is not divisible by tp x pp = 2 x 2"):
        cfg.parallel.data_parallel_size(6)
    cfg = load_run_config(TINY, ["parallel.dp=2"])
    with pytest.raises(ConfigError, match="set parallel.dp=4"):
        cfg.parallel.data_parallel_size(4)
    cfg = load_run_config(TINY, ["train.global_batch_size=6", "train.micro_batch_size=2"])
    with pytest.raises(ConfigError, match="multiple of 8"):
        cfg.train.micro_batches(4)
    with pytest.raises(ConfigError, match="multiple of 8") as info:
        build_run(cfg).check_layouts(4)  # a run without stages: its own keys
    assert info.value.key == "train.global_batch_size"
    build_run(cfg).check_layouts(3)


def test_missing_file_and_bad_include(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(tmp_path / "nope.yaml")
    run = tmp_path / "run.yaml"
    run.write_text("model: models/does-not-exist.yaml\n")
    with pytest.raises(ConfigError, match="does-not-exist.yaml"):
        load_run_config(run)
    run.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_run_config(run)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``flm ARGV`` through the CLI's main (its one error handler) in this process: these commands
    fail or finish before any torch work, so a fresh interpreter would only add its start-up."""
    code = flm_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_config_show_cli_prints_resolved_config_and_fails_clearly(capsys):
    code, out, _ = cli(capsys, "config", "show", str(TINY), "parallel.tp=2", "--world-size", "2")
    assert code == 0 and "tp: 2" in out and "hidden_size: 64" in out
    code, _, err = cli(capsys, "config", "show", str(TINY), "parallel.tp=3")
    assert code == 2
    assert "model.num_attention_heads" in err and "allowed tp values" in err
    code, _, err = cli(capsys, "config", "show", str(TINY), "--world-size", "3", "parallel.tp=2")
    assert code == 2 and "world size 3" in err


@pytest.mark.parametrize(
    "override, key, hint",
    [
        (["engine=deepspeed", "parallel.tp=2"], "parallel.tp", "data parallelism only, got tp=2; set tp=1"),
        (["engine=deepspeed", "parallel.pp=2"], "parallel.pp", "set pp=1"),
        (
            ["engine=deepspeed", "parallel.distributed_optimizer=true"],
            "parallel.distributed_optimizer",
            "ZeRO partitions the optimizer state already (deepspeed.zero_stage)",
        ),
        (["engine=deepspeed", "deepspeed.zero_stage=4"], "deepspeed.zero_stage", "allowed values: 1, 2, 3"),
        (["engine=deepspeed", "deepspeed.zero_stage=true"], "deepspeed.zero_stage", "allowed values: 1, 2, 3"),
        (["engine=deepspeed", "deepspeed.offload=true"], "deepspeed.offload", "allowed keys here"),
        (["engine=ds"], "engine", "allowed values: 'megatron', 'deepspeed'"),
    ],
)
def test_deepspeed_engine_settings_name_the_key(override, key, hint):
    with pytest.raises(ConfigError) as info:
        load_run_config(TINY, override)
    assert info.value.key == key, str(info.value)
    assert hint in str(info.value)


def test_deepspeed_engine_config_defaults_and_staged_layouts(tmp_path):
    cfg = load_run_config(TINY, ["engine=deepspeed", "deepspeed.zero_stage=3", "parallel.dp=2"])
    assert cfg.engine == "deepspeed" and cfg.deepspeed.zero_stage == 3 and not cfg.deepspeed.offload_optimizer
    assert load_run_config(TINY).engine == "megatron" and load_run_config(TINY).deepspeed.zero_stage == 1
    run = tmp_path / "run.yaml"
    run.write_text(
        "engine: deepspeed\nstages:\n"
        "  - {name: a, tokens: 1024, model: {num_layers: 2}}\n"
        "  - {name: b, tokens: 1024, model: {num_layers: 4}, parallel: {tp: 2}, growth: {ramp: {steps: 2}}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_run(run)
    assert info.value.key == "stages[1].parallel.tp" and "data parallelism only" in str(info.value)


def test_deepspeed_engine_refused_layout_fails_the_cli_before_launching(capsys):
    code, _, err = cli(capsys, "train", str(TINY), "engine=deepspeed", "parallel.tp=2")
    assert code == 2 and "parallel.tp" in err and "engine: deepspeed" in err


def test_overlap_defaults_on_for_nccl_off_on_gloo():
    cfg = load_run_config(REPO / "configs" / "runs" / "tiny.yaml", [])
    assert cfg.parallel.overlap("gloo") == (False, False)
    assert cfg.parallel.overlap("nccl") == (True, False)  # no distributed optimizer: no parameter gather
    distopt = load_run_config(REPO / "configs" / "runs" / "tiny.yaml", ["parallel.distributed_optimizer=true"])
    assert distopt.parallel.overlap("nccl") == (True, True)
    explicit = load_run_config(
        REPO / "configs" / "runs" / "tiny.yaml",
        [
            "parallel.distributed_optimizer=true",
            "parallel.overlap_grad_reduce=true",
            "parallel.overlap_param_gather=true",
        ],
    )
    assert explicit.parallel.overlap("gloo") == (True, True)
    with pytest.raises(ConfigError, match="overlap_param_gather"):
        load_run_config(REPO / "configs" / "runs" / "tiny.yaml", ["parallel.overlap_param_gather=true"])


def test_process_group_timeout_of_a_run_and_of_a_staged_job():
    """``parallel.timeout_minutes`` (default 30); a staged job's one process group takes the
    largest of its stages' values."""
    assert load_run_config(TINY).timeout_minutes() == 30.0
    assert load_run_config(TINY, ["parallel.timeout_minutes=45"]).timeout_minutes() == 45.0
    staged = load_run_config(DRYRUN, ["stages.1.parallel.timeout_minutes=90", "stages.2.parallel.timeout_minutes=5"])
    assert [s.parallel.timeout_minutes for s in staged.stages] == [30.0, 90.0, 5.0]
    assert staged.timeout_minutes() == 90.0
    with pytest.raises(ConfigError) as info:
        load_run_config(DRYRUN, ["stages.2.parallel.timeout_minutes=-1"])
    assert info.value.key == "stages[2].parallel.timeout_minutes"


def test_flm101b_detects_loss_spikes_in_every_stage():
    run = load_run(REPO / "configs" / "runs" / "flm101b.yaml")
    assert run.config.divergence.spike_sigmas == 6 and run.config.divergence.action == "stop"
    assert [stage.config.divergence.spike_sigmas for stage in run.stages] == [6, 6, 6]
