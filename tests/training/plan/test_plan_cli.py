"""``flm plan`` through the real command line (one subprocess for the timing; the rest through
``training.cli.main`` in this process)."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import REPO, flm
from training.cli import main

FLM = str(REPO / "configs" / "runs" / "flm101b.yaml")
TINY = str(REPO / "configs" / "runs" / "tiny.yaml")


def test_flm101b_table_in_well_under_a_minute():
    started = time.monotonic()
    proc = flm(
        "plan",
        "configs/runs/flm101b.yaml",
        "--gpu-type",
        "a800",
        "--tflops",
        "162,160,165",
        "--compare-days",
        "9.63,5.37,6.54",
    )
    assert time.monotonic() - started < 60
    out = proc.stdout
    for text in ("16b", "51b", "101b", "tp4 pp4 dp12 sp", "From scratch", "w/ selective", "GPU-hours", "ref days"):
        assert text in out, text
    row = next(line for line in out.splitlines() if line.startswith("101b ") and "given" in line)
    cells = row.split()
    assert cells[cells.index("given") + 3] == "6.11" and cells[-1] == "-6.6%"


def test_mup_multipliers_are_printed_per_stage(capsys):
    assert main(["plan", FLM]) == 0
    out = capsys.readouterr().out
    assert "μP (base width 256)" in out
    rows = {line.split()[0]: line.split() for line in out.split("μP (base width")[1].splitlines()[2:5]}
    assert rows["16b"] == ["16b", "5632", "22", "0.0004", "1.82e-05", "0.09091", "0.007812", "0.00341"]
    # a grown stage's peak is derived from its start LR (3.4e-4 where it enters the run-level cosine)
    assert rows["51b"][2:6] == ["40", "0.00294", "7.35e-05", "0.05"]
    lr_rows = {line.split()[0]: line.split() for line in out.split("Learning rate")[1].splitlines()[2:5]}
    assert [lr_rows[s][2] for s in ("16b", "51b", "101b")] == ["0.0004", "0.00034", "0.0002"]
    assert main(["plan", FLM, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stages"][2]["mup"]["hidden_lr"] == pytest.approx(doc["stages"][2]["lr"] / 40)
    assert doc["stages"][2]["lr_at_start"] == pytest.approx(2e-4) and doc["scratch"]["mup"]["width_multiplier"] == 40
    assert main(["plan", TINY, "--json", "--gpus", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"][0]["mup"] is None


def test_json_and_exit_status_on_layout_errors(capsys):
    assert main(["plan", FLM, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in doc["stages"]] == ["16b", "51b", "101b"]
    assert doc["stages"][2]["fits"] == "selective"
    assert main(["plan", FLM, "--gpus", "96"]) == 1
    out = capsys.readouterr().out
    assert "error: stages[0].parallel.dp:" in out and "set stages.0.parallel.dp=48" in out


def test_argument_errors_are_exit_2_with_the_fix(capsys):
    assert main(["plan", TINY]) == 2
    assert "pass --gpus N" in capsys.readouterr().err
    assert main(["plan", FLM, "--mfu", "52"]) == 2
    assert "fraction" in capsys.readouterr().err
    assert main(["plan", FLM, "--tflops", "1,2"]) == 2
    assert "one per stage (3)" in capsys.readouterr().err


def test_registered_and_config_errors_name_the_key(capsys):
    from training.cli import build_parser

    assert "plan" in build_parser().format_help()
    assert main(["plan", FLM, "stages.2.parallel.tp=3"]) == 2
    err = capsys.readouterr().err
    assert "stages[2].model.num_attention_heads" in err and "not divisible by parallel.tp=3" in err
