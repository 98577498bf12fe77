"""μP's coordinate check on the project's trainer: under the standard parametrisation the attention
output and the logits grow with width after a few steps; under μP they stay flat."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO
from training.engine.model.probes import SITES
from training.mup.coord_check import CHECK_DEFAULTS, run_coord_check, summary, write
from training.mup.proxies import load_base

TINY = REPO / "configs" / "runs" / "tiny.yaml"
WIDTHS = [32, 64, 128, 256]
STEPS = 2
#: a fast check: one layer, short sequences, one micro-batch per step; an LR at which two steps
#: move the logits past their initial values (under μP the tied readout's logits start ~ m^-1/2)
FAST = ["model.num_layers=1", "model.seq_length=32", "train.micro_batch_size=8", "train.lr=1e-2"]
#: |slope| of a flat site under μP after the steps (measured: within 0.1; the standard
#: parametrisation gives 0.8 for the logits and 1.4 for the attention output)
MUP_FLAT = 0.25


def _check(tmp_path, overrides):
    base = load_base(str(TINY), [*CHECK_DEFAULTS, *FAST, *overrides])
    return run_coord_check(base, WIDTHS, steps=STEPS, out_dir=tmp_path, config_name="tiny")


def test_standard_parametrisation_grows_with_width(tmp_path):
    result = _check(tmp_path, [])
    slopes = {site: s[STEPS] for site, s in result.slopes().items()}
    assert slopes["attention"] > 0.8, summary(result)
    assert slopes["logits"] > 0.5, summary(result)
    assert abs(slopes["embedding"]) < 0.1, summary(result)  # a lookup: width-independent in any parametrisation
    # the files the command writes: the numbers, and a plot
    json_path, png = write(result, tmp_path)
    data = json.loads(json_path.read_text())
    assert data["widths"] == WIDTHS and data["steps"] == STEPS and set(data["values"]) == set(SITES)
    assert all(len(data["values"][site]) == len(WIDTHS) for site in SITES)
    assert all(len(per_width) == STEPS + 1 for per_width in data["values"]["logits"])
    assert [len(layers) for layers in data["layers"]["attention"][0]] == [1] * (STEPS + 1)  # one layer
    assert data["slopes"]["logits"][STEPS] == pytest.approx(slopes["logits"])
    assert png.stat().st_size > 10_000


def test_mup_is_flat_in_width(tmp_path):
    result = _check(tmp_path, ["model.mup.base_width=32"])
    for site in SITES:
        assert abs(result.slopes()[site][STEPS]) < MUP_FLAT, summary(result)
