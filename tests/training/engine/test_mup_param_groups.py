"""μP in both engines (megatron and DeepSpeed ZeRO-1, one process): the learning rate each parameter
is actually updated with is ``lr / m`` on the hidden matrices and ``lr`` on everything else, the ratio
holds at every step of the schedule, across a save and resume, and switches to the new width after a
growth; weight decay is ``weight_decay * m`` on the hidden matrices (``lr * weight_decay`` per step for
every width)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from growth import plan_for
from tests.helpers import REPO
from training.config import load_run_config
from training.data.source import MockSource
from training.engine.factory import make_trainer
from training.engine.megatron_checkpoint import unwrap_ddp
from training.orchestration.grow import grow_checkpoint

TINY = REPO / "configs" / "runs" / "tiny.yaml"
#: tiny.yaml's hidden size is 64: m = 2
MUP = ["model.mup.base_width=32"]
HIDDEN = ("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight")
ENGINES = ["megatron", "deepspeed"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def local_rank(monkeypatch):
    """The DeepSpeed engine sets LOCAL_RANK=0 in a plain single process; keep it out of the test
    process's environment afterwards."""
    monkeypatch.setenv("LOCAL_RANK", "0")


def run_config(tmp_path, engine: str, overrides: list[str]):
    return load_run_config(
        TINY,
        [
            f"engine={engine}",
            "logging.progress_bar=false",
            "logging.tensorboard=false",
            "train.eval_interval=1000",
            f"output_dir={tmp_path}",
            *overrides,
        ],
    )


def trainer_of(cfg):
    src = MockSource(cfg.model.vocab_size, cfg.model.seq_length, seed=7)
    return make_trainer(cfg, train_source=src, valid_source=src)


def module_of(t):
    return unwrap_ddp(t.model[0]) if t.engine == "megatron" else t.ds_engine.module


def named_groups(t) -> dict[str, dict]:
    """Parameter name -> the optimizer parameter group that updates it (the megatron engine's torch
    optimizer groups; DeepSpeed's ZeRO groups with their original parameters, ``bit16_groups``)."""
    if t.engine == "megatron":
        groups = [(g, g["params"]) for g in t.optimizer.param_groups]
    else:
        groups = list(zip(t.optimizer.param_groups, t.optimizer.bit16_groups))
    out = {}
    for name, p in module_of(t).named_parameters():
        hits = [g for g, params in groups if any(q is p for q in params)]
        assert len(hits) == 1, name
        out[name] = hits[0]
    return out


def check_groups(t, m: float) -> None:
    """Every hidden matrix is stepped with the schedule's LR / m and decay x m, everything else with
    the schedule's LR (decay 0 on norms and biases)."""
    base = t.optimizer.param_groups[0]
    assert base["lr_mult"] == 1.0 and base["wd_mult"] == 1.0
    lr, wd = base["lr"], t.cfg.train.weight_decay
    assert lr > 0
    for name, g in named_groups(t).items():
        if name.endswith(HIDDEN):
            assert g["lr"] == pytest.approx(lr / m, rel=1e-12) and g["weight_decay"] == pytest.approx(wd * m), name
        else:
            assert g["lr"] == lr, name
            assert g["weight_decay"] == (0.0 if name.endswith("bias") or "layernorm" in name else wd), name


@pytest.mark.parametrize("engine", ENGINES)
def test_first_adam_update_is_lr_over_m_on_hidden_matrices_only(tmp_path, engine, local_rank):
    """Adam's first update is lr * g / |g|: its largest entry is the learning rate the parameter was
    actually stepped with (weight decay off, so nothing else moves the weights)."""
    cfg = run_config(tmp_path, engine, [*MUP, "train.weight_decay=0", "train.warmup_steps=1", "train.lr=1e-3"])
    t = trainer_of(cfg)
    before = {n: p.detach().clone() for n, p in module_of(t).named_parameters()}
    t.step()
    for name, p in module_of(t).named_parameters():
        step = (p.detach() - before[name]).abs().max().item()
        want = 1e-3 / 2 if name.endswith(HIDDEN) else 1e-3
        assert step == pytest.approx(want, rel=1e-3), name


@pytest.mark.parametrize("engine", ENGINES)
def test_group_lrs_keep_the_ratio_through_schedule_resume_and_growth(tmp_path, engine, local_rank):
    cfg = run_config(tmp_path / "a", engine, [*MUP, "train.steps=4", "train.warmup_steps=2"])
    t = trainer_of(cfg)
    for _ in range(4):  # warmup, then cosine decay
        t.step()
        check_groups(t, 2.0)
    saved = t.save()
    resumed = trainer_of(run_config(tmp_path / "b", engine, [*MUP, "train.steps=4", "train.warmup_steps=2"]))
    resumed.load(saved)
    check_groups(resumed, 2.0)
    assert resumed.optimizer.param_groups[0]["lr"] == t.optimizer.param_groups[0]["lr"]
    del t, resumed

    # hidden 64 -> 128 (m 2 -> 4): the grown stage's optimizer is built for its own width
    new_model = dataclasses.replace(cfg.model, hidden_size=128, kv_channels=16)
    plan = plan_for(cfg.model, new_model, {"hidden": "msg"}, ramp={"steps": 2})
    grown = grow_checkpoint(saved, tmp_path / "grown", plan).dst
    grown_cfg = dataclasses.replace(run_config(tmp_path / "c", engine, MUP), model=new_model)
    g = trainer_of(grown_cfg)
    g.init_from(grown)
    g.step()
    check_groups(g, 4.0)
    assert g.adam_step == 5  # the carried moments' step continued


def test_standard_parametrisation_has_no_mup_group(tmp_path, local_rank):
    """Without ``model.mup`` the groups are megatron's standard ones (as before μP existed), and
    ``model.mup`` at m = 1 (hidden = base_width) builds exactly those too."""
    for name, overrides in (("sp", []), ("m1", ["model.mup.base_width=64"])):
        t = trainer_of(run_config(tmp_path / name, "megatron", overrides))
        assert [(g["wd_mult"], g["lr_mult"]) for g in t.optimizer.param_groups] == [(1.0, 1.0), (0.0, 1.0)]
        t.step()
        check_groups(t, 1.0)


def test_mup_changes_what_the_model_computes(tmp_path, local_rank):
    """Same weights, same batch: μP (m = 2, attention x 1/d, logits / m) gives another loss than the
    standard parametrisation, and the same one in both engines."""
    losses = {}
    for engine in ENGINES:
        for name, overrides in (("sp", []), ("mup", MUP)):
            t = trainer_of(run_config(tmp_path / f"{engine}-{name}", engine, [*overrides, "train.seed=3"]))
            with torch.no_grad():
                for p in module_of(t).parameters():  # the same weights for all four
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
            losses[engine, name] = t.evaluate()
    assert losses["megatron", "mup"] == pytest.approx(losses["deepspeed", "mup"], rel=1e-6)
    assert losses["megatron", "sp"] == pytest.approx(losses["deepspeed", "sp"], rel=1e-6)
    assert abs(losses["megatron", "mup"] - losses["megatron", "sp"]) > 0.01
