"""``flm mup sweep``: the table, best LR per width and shift in grid steps; a failed proxy is
reported by name and reason while the others still count."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO, flm
from training.cli import main as flm_main
from training.mup.sweep import SweepResult

TINY = REPO / "configs" / "runs" / "tiny.yaml"


def _result(losses: dict[tuple[int, float, int], float | None]) -> SweepResult:
    widths = sorted({w for w, _, _ in losses})
    lrs = sorted({lr for _, lr, _ in losses})
    seeds = sorted({s for _, _, s in losses})
    result = SweepResult("cfg", "sp", widths, lrs, seeds, "val_loss", 1, 10)
    for (w, lr, s), loss in losses.items():
        result.runs.append(
            {
                "name": f"{w}-{lr}-{s}",
                "width": w,
                "lr": lr,
                "seed": s,
                "loss": loss,
                "error": None if loss else "boom",
                "dir": "",
            }
        )
    return result


def test_best_lr_per_width_mean_over_seeds_and_failed_cells():
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]
    table = {
        64: [(3.0, 3.1), (2.8, 2.9), (2.7, 2.95), (2.9, None)],  # 4e-3 best on average (2.825 vs 2.85)
        256: [(2.6, 2.6), (2.5, 2.5), (2.9, 2.9), (None, None)],  # 8e-3 diverged
    }
    result = _result({(w, lr, s): row[i][s] for w, row in table.items() for i, lr in enumerate(lrs) for s in (0, 1)})
    assert result.cell(64, 4e-3) == pytest.approx(2.825)
    assert result.spread(64, 4e-3) == pytest.approx(0.125)
    assert result.cell(64, 8e-3) is None  # one seed failed: not a usable LR
    assert result.best() == {64: 4e-3, 256: 2e-3}
    assert result.shift(64, 256) == -1
    data = result.to_json()
    assert data["best_lr"] == {"64": 4e-3, "256": 2e-3} and data["shift_grid_steps"] == -1
    text = result.table()
    assert "2.8250±0.125*" in text and "-1 grid steps" in text and "3 failed run(s)" in text


@pytest.mark.slow
def test_sweep_cli_trains_each_proxy_in_its_own_process_and_reports_a_failed_one(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["model.num_layers=1", "model.seq_length=32", "train.micro_batch_size=8", "train.clip_grad=0"]
    args += ["train.warmup_steps=0", "train.min_lr=0", "train.eval_interval=3"]
    proc = flm(
        "mup", "sweep", str(TINY), *args, "--widths", "32", "--lr", "1e-3,1e30", "--steps", "3", "--out", str(out)
    )
    data = json.loads((out / "sweep.json").read_text())
    ok, failed = sorted(data["runs"], key=lambda r: r["lr"])
    assert ok["error"] is None and ok["loss"] > 0 and data["best_lr"] == {"32": 1e-3}
    # the diverged proxy: named, with the trainer's one-line reason and its log
    assert failed["loss"] is None and "loss is nan" in failed["error"] and "train.log" in failed["error"]
    assert "w32-lr1e+30-s1234" in proc.stdout and "1 failed run(s)" in proc.stdout
    # each proxy is a run of its own: config, metrics, checkpoint
    assert (out / ok["name"] / "config.yaml").is_file() and (out / ok["name"] / "checkpoints").is_dir()
    # a rerun reuses the finished proxy (and retrains only the failed one)
    # (through the CLI's main in this process: the proxies train in processes of their own anyway)
    flm_main(
        ["mup", "sweep", str(TINY), *args, "--widths", "32", "--lr", "1e-3,1e30", "--steps", "3", "--out", str(out)]
    )
    again = capsys.readouterr().err
    assert (
        "w32-lr0.001-s1234: finished run reused" in again
        and "proxy w32-lr1e+30-s1234 (width 32, lr 1e+30, seed 1234) failed" in again
    )
