"""The float64 reference check spread over ranks (training/orchestration/reference_check.py): the
blocks are contiguous and cost-balanced, and on two real gloo processes every rank reads only its
share of both models' layers, gets the one-process report bit for bit, and a broken operator fails
the grow on every rank."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.local_launch import free_port
from training.orchestration.reference_check import layer_shares


def test_shares_are_contiguous_cover_every_item_and_balance_the_cost():
    assert layer_shares([1.0] * 8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert layer_shares([1.0] * 3, 1) == [range(0, 3)]
    # a heavy head (the readout matrix) gets a rank of its own
    assert layer_shares([1.0] * 6 + [6.0], 2) == [range(0, 6), range(6, 7)]
    # more ranks than items: some ranks idle, every item once, in order
    shares = layer_shares([1.0, 1.0, 1.0], 8)
    assert [i for s in shares for i in s] == [0, 1, 2] and sum(1 for s in shares if len(s)) == 3
    for costs, world in [([3.0, 1.0, 1.0, 1.0, 5.0, 2.0, 2.0], 3), ([1.0] * 80 + [8.0], 192)]:
        shares = layer_shares(costs, world)
        assert [i for s in shares for i in s] == list(range(len(costs)))
        assert max(sum(costs[i] for i in s) for s in shares) <= sum(costs) / world + max(costs)
    with pytest.raises(ValueError, match="positive costs"):
        layer_shares([1.0, 0.0], 2)


def _case():
    from tests.growth.helpers import grown_plan, make_cfg

    cfg = make_cfg({"normalization": "RMSNorm", "activation": "swiglu", "num_query_groups": 2}, num_layers=3)
    plan = grown_plan(
        cfg,
        {"hidden": "msg", "ffn": "msg", "depth": "msg"},
        hidden_size=24,
        ffn_hidden_size=32,
        num_layers=5,
        plan={"depth": {"placement": "interleave", "init": "copy"}},
    )
    return cfg, plan


def _worker(rank: int, port: int, out: str) -> None:
    """Grow on two ranks, then grow again with a broken operator; each rank records its report (or
    error) and which layers of which checkpoint it read for the check."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    import training.orchestration.grow as gc
    from tests.growth.helpers import random_state
    from training.checkpoint.logical import write_logical
    from training.config import RunConfig
    from training.config_base import to_dict

    dist.init_process_group("gloo")  # as torchrun's env:// (grow does not need megatron's groups)
    cfg, plan = _case()
    meta = {"config": to_dict(RunConfig(model=cfg)), "step": 1, "consumed_samples": 8, "adam_step": 1}
    src = write_logical(Path(out, "src"), random_state(cfg, dtype=torch.float32), meta)
    reads: list[tuple[str, int]] = []
    real_layer = gc.CheckpointWeights.layer

    def layer(self, index):
        reads.append((self.reader.path.name, index))
        return real_layer(self, index)

    gc.CheckpointWeights.layer = layer
    report = gc.grow_checkpoint(src, Path(out, "dst"), plan)
    result: dict = {"verify": report.verify.__dict__, "reads": list(reads)}
    real = gc.grow_layer
    gc.grow_layer = lambda g, key, j, old, **kw: (
        real(g, key, j, old, **kw)
        * (  # a "bug": one matrix off
            1.01 if key.endswith("linear_fc2.weight") else 1
        )
    )
    try:
        gc.grow_checkpoint(src, Path(out, "broken"), plan)
    except gc.GrowthVerificationError as err:
        result["broken"] = str(err)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_split_the_layers_get_the_one_process_report_and_catch_a_broken_operator(tmp_path):
    from growth import prepare_growth
    from growth.verify import verify_weights
    from training.checkpoint.dcp_io import TensorReader
    from training.orchestration.grow import CheckpointWeights, verify_tokens

    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    cfg, plan = _case()
    g = prepare_growth(plan, cfg)
    alone = verify_weights(
        g.old_cfg,
        CheckpointWeights(TensorReader(tmp_path / "src"), g.old_cfg),
        g.new_cfg,
        CheckpointWeights(TensorReader(tmp_path / "dst"), g.new_cfg),
        g.masks,
        verify_tokens(cfg.vocab_size, cfg.seq_length, seed=plan.seed),
    )
    assert ranks[0]["verify"] == ranks[1]["verify"] == alone.__dict__
    assert alone.max_abs_dlogit <= 1e-5 * (1 + alone.max_abs_logit)
    # the grown model is checked before the rename, in dst.partial
    for model, layers in (("src", 3), ("dst.partial", 5)):
        mine = [sorted(i for m, i in r["reads"] if m == model) for r in ranks]
        assert mine[0] and mine[1], f"both ranks work on {model}: {mine}"
        assert mine[0] + mine[1] == list(range(layers)), f"each {model} layer read once, rank 0 first: {mine}"
    assert all("does not compute what the old one did" in r.get("broken", "") for r in ranks), ranks
    assert not (tmp_path / "broken").exists() and not (tmp_path / "broken.partial").exists()
