"""``flm predict``: proxies at several widths, their loss at one step, the fit, the prediction
with its leave-one-out band, the measured target; clear errors before anything trains."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, flm
from training.cli import main as flm_main
from training.errors import UsageError
from training.mup.predict import run_predict
from training.mup.proxies import load_base

TINY = REPO / "configs" / "runs" / "tiny.yaml"
#: the embedded corpus (the loss falls with width within a few steps; mock tokens would not)
FAST = [
    "data.kind=default",
    "model.vocab_size=2048",
    "model.num_layers=1",
    "model.seq_length=32",
    "train.micro_batch_size=8",
    "train.lr=3e-3",
    "train.eval_interval=5",
]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": [32, 64]}, "needs at least 3 proxy widths, got 2"),
        ({"step": 50}, r"--step 50 is beyond the end of the proxies' runs \(train.steps = 20\)"),
        ({"target_width": 32}, "--target-width 32 is one of the proxies' --widths"),
        ({"target_width": 72}, "width 72 is not a multiple of the head dimension 16"),
        ({"window": 11, "metric": "loss"}, "--window 11 must be in 1..10"),
    ],
)
def test_errors_come_before_any_training(tmp_path, kwargs, message):
    args = {"widths": [16, 32, 48], "step": 10, **kwargs}
    with pytest.raises(UsageError, match=message):
        run_predict(load_base(str(TINY), []), out_dir=tmp_path, **args)
    assert not any(tmp_path.iterdir())  # nothing was trained


@pytest.mark.slow
def test_predict_cli_fits_proxies_predicts_measures_and_reuses(tmp_path, capsys):
    out = tmp_path / "pred"
    common = [str(TINY), *FAST, "--widths", "16,32,48,64", "--steps", "10", "--step", "10", "--out", str(out)]
    proc = flm("predict", *common, "--target-width", "96", "--measure")
    data = json.loads((out / "predict.json").read_text())
    assert [p["width"] for p in data["proxies"]] == [16, 32, 48, 64]
    losses = [p["loss"] for p in data["proxies"]]
    params = [p["params"] for p in data["proxies"]]
    assert params == sorted(params) and losses == sorted(losses, reverse=True)
    fit = data["fit"]
    assert fit["b"] < 0 and fit["a"] > 0 and fit["c"] >= 0
    # the prediction is the fit at the target's size, inside its leave-one-out band, below the widest proxy
    n = data["target"]["params"]
    assert data["predicted"] == pytest.approx(fit["a"] * n ** fit["b"] + fit["c"])
    lo, hi = data["band"]
    assert (
        len(data["leave_one_out"]) == 4
        and lo <= data["predicted"] * (1 + 1e-9)
        and hi >= data["predicted"] * (1 - 1e-9)
    )
    assert data["predicted"] < losses[-1]
    # the measured target: its val_loss at the step, and the error in % of it
    measured = json.loads((out / "w96-lr0.003-s1234" / "metrics.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert data["measured"] == pytest.approx(measured)
    assert data["error_pct"] == pytest.approx(100 * (data["predicted"] - measured) / measured)
    assert "predicted loss" in proc.stdout and "prediction error" in proc.stdout
    # reused: another target needs no training (a step past the runs' end: test_errors_come_before_any_training)
    # (through the CLI's main in this process: nothing is trained, a fresh interpreter would only add its start-up)
    assert flm_main(["predict", *common, "--target-width", "256"]) == 0
    again = capsys.readouterr().err
    assert again.count("finished run reused") == 4 and "trained in" not in again
    assert json.loads((out / "predict.json").read_text())["target"]["width"] == 256


def test_seeds_are_averaged_per_width_and_for_the_measured_target(tmp_path, monkeypatch):
    """Every (width, seed) proxy and every seed of the target is trained; the fit sees each width's
    mean over the seeds, the error is against the target's mean. The proxies' training is replaced
    by known losses here (the slow test above trains real ones)."""
    import training.mup.predict as predict
    from training.mup.runner import ProxyOutcome

    def loss(width, seed):
        return 2.0 + 40.0 / width + 0.01 * seed

    trained = []

    def fake_train(proxies):
        trained.extend((p.width, p.seed) for p in proxies)
        return [ProxyOutcome(p, records=[{"step": 10, "val_loss": loss(p.width, p.seed)}]) for p in proxies]

    monkeypatch.setattr(predict, "train_proxies", fake_train)
    widths, seeds = [16, 32, 48, 64], [1, 2, 5]
    result = run_predict(
        load_base(str(TINY), []), widths=widths, step=10, out_dir=tmp_path, target_width=128, seeds=seeds, measure=True
    )
    assert trained == [(w, s) for w in widths for s in seeds] + [(128, s) for s in seeds]
    assert result.losses == pytest.approx([loss(w, 0) + 0.01 * 8 / 3 for w in widths])
    assert result.seed_losses[0] == pytest.approx([loss(16, s) for s in seeds])
    assert result.measured == pytest.approx(loss(128, 0) + 0.01 * 8 / 3)
    assert result.measured_seeds == pytest.approx([loss(128, s) for s in seeds])
    data = result.to_json()
    assert data["seeds"] == seeds and data["proxies"][1]["seed_losses"] == pytest.approx([loss(32, s) for s in seeds])
    assert "mean of seeds 1,2,5" in result.report() and "over the seeds" in result.report()
