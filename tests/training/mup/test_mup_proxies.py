"""Proxies: the run at another width (head dimension fixed, the run's ratios kept), one process;
their parameter count; reading their losses; a proxy directory of another config is refused."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers import REPO
from training.config import ParallelConfig, load_run_config, run_config_to_dict
from training.errors import UsageError
from training.mup.proxies import load_base, non_embedding_params, parse_floats, parse_widths, proxy_config, proxy_model
from training.mup.runner import CONFIG_FILE, Proxy, loss_at, train_proxy

TINY = REPO / "configs" / "runs" / "tiny.yaml"
DRYRUN = REPO / "configs" / "runs" / "dryrun.yaml"


def test_proxy_keeps_head_dim_and_ratios():
    model = load_run_config(TINY, ["model.num_query_groups=2"]).model  # h 64, 4 heads of 16, ffn 256
    data = proxy_model(model, 256)
    assert (data["hidden_size"], data["num_attention_heads"], data["num_query_groups"]) == (256, 16, 8)
    assert data["ffn_hidden_size"] == 1024 and data["kv_channels"] is None
    with pytest.raises(UsageError, match="not a multiple of the head dimension 16"):
        proxy_model(model, 40)
    with pytest.raises(UsageError, match="not divisible into query groups of 2 heads"):
        proxy_model(model, 48)
    swiglu = load_run_config(TINY, ["model.activation=swiglu", "model.ffn_hidden_size=176"]).model
    assert proxy_model(swiglu, 128)["ffn_hidden_size"] == 352


def test_proxy_config_is_one_process_with_its_lr_seed_and_steps(tmp_path):
    base = load_base(str(TINY), ["parallel.tp=2", "train.lr=2e-3", "train.min_lr=2e-4", "model.mup.base_width=64"])
    cfg = proxy_config(base, 128, output_dir=str(tmp_path / "p"), lr=8e-3, seed=7, steps=11)
    assert cfg.parallel == ParallelConfig()
    assert (cfg.model.hidden_size, cfg.model.num_attention_heads, cfg.model.ffn_hidden_size) == (128, 8, 512)
    assert cfg.model.mup is not None and cfg.model.mup.base_width == 64  # the base width is the run's
    assert (cfg.train.lr, cfg.train.seed, cfg.train.steps) == (8e-3, 7, 11)
    assert cfg.train.min_lr == pytest.approx(8e-4)  # the schedule's floor keeps its ratio
    assert (cfg.checkpoint.save_interval, cfg.checkpoint.keep_last, cfg.logging.tensorboard) == (0, 1, False)
    assert cfg.output_dir == str(tmp_path / "p") and cfg.name == "tiny-w128-lr0.008-s7"


def test_staged_runs_need_a_stage():
    with pytest.raises(UsageError, match="staged run: pass --stage N"):
        load_base(str(DRYRUN), [])
    with pytest.raises(UsageError, match="out of range"):
        load_base(str(DRYRUN), [], stage=3)
    with pytest.raises(UsageError, match="not a staged run"):
        load_base(str(TINY), [], stage=0)
    stage = load_base(str(DRYRUN), [], stage=1)
    assert (stage.model.hidden_size, stage.model.num_layers, stage.train.lr) == (128, 4, 1.5e-3)
    assert not stage.stages and stage.train.schedule_offset_steps == 0


def test_list_options():
    assert parse_widths("128,64,64") == [64, 128]
    assert parse_floats("3e-3,1e-3", "--lr") == [1e-3, 3e-3]
    for bad in ("64,x", "0,64", ""):
        with pytest.raises(UsageError, match="--widths"):
            parse_widths(bad)
    with pytest.raises(UsageError, match="--lr"):
        parse_floats("1e-3,-1", "--lr")


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        [
            "model.normalization=RMSNorm",
            "model.activation=swiglu",
            "model.tie_embeddings=false",
            "model.bias=false",
            "model.num_query_groups=2",
            "model.vocab_size=500",
        ],
    ],
)
def test_non_embedding_params_count_the_megatron_model(overrides, one_thread):
    from training.engine.model.build import build_model, transformer_config
    from training.engine.parallel import setup_layout, teardown

    cfg = load_run_config(TINY, overrides)
    setup_layout(ParallelConfig(), 1234)
    try:
        (gpt,) = build_model(cfg.model, transformer_config(cfg.model, cfg.parallel, bf16=False, gloo=True))
        counted = sum(
            p.numel()
            for name, p in gpt.named_parameters()
            if not name.startswith(("embedding.word_embeddings", "output_layer"))
        )
    finally:
        teardown()
    assert non_embedding_params(cfg.model) == counted


def test_loss_at_reads_val_loss_or_a_train_loss_window():
    records = [{"step": s, "loss": 10.0 - s} for s in range(1, 11)]
    records[4]["val_loss"] = 5.5
    records[9]["val_loss"] = 1.5
    assert loss_at(records) == 1.5
    assert loss_at(records, step=5) == 5.5
    assert loss_at(records, metric="loss", step=10, window=4) == pytest.approx((3 + 2 + 1 + 0) / 4)
    with pytest.raises(ValueError, match="no val_loss at step 7"):
        loss_at(records, step=7)
    with pytest.raises(ValueError, match="ended at step 10, before step 12"):
        loss_at(records, step=12)


def test_a_proxy_directory_of_another_config_is_refused(tmp_path):
    base = load_base(str(TINY), [])
    first = proxy_config(base, 32, output_dir=str(tmp_path / "w32"), lr=1e-3, seed=1, steps=5)
    (tmp_path / "w32").mkdir()
    (tmp_path / "w32" / CONFIG_FILE).write_text(yaml.safe_dump(run_config_to_dict(first)))
    again = proxy_config(base, 32, output_dir=str(tmp_path / "w32"), lr=1e-3, seed=1, steps=9)
    with pytest.raises(UsageError, match=r"trained with another config \(differs in train.steps\)"):
        train_proxy(Proxy("w32", 32, 1e-3, 1, again))
