"""The data: section: defaults, types and the rules between fields."""

from __future__ import annotations

import pytest

from training.config.data import DataConfig, DatasetConfig
from training.config_base import ConfigError, from_dict, to_dict


def test_defaults_are_mock():
    cfg = from_dict(DataConfig, {})
    assert cfg.kind == "mock" and cfg.seed == 1234 and cfg.datasets == [] and cfg.tokenizer is None


def test_prepared_round_trip():
    data = {
        "kind": "prepared",
        "seed": 7,
        "tokenizer": "tok",
        "datasets": [{"path": "a", "weight": 0.7}, {"path": "b", "weight": 3}],
        "validation_fraction": 0.05,
    }
    cfg = from_dict(DataConfig, data)
    assert cfg.datasets == [DatasetConfig("a", 0.7), DatasetConfig("b", 3.0)]
    assert from_dict(DataConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, key",
    [
        ({"kind": "prepared"}, "data.datasets"),
        ({"kind": "web"}, "data.kind"),
        ({"kind": "prepared", "datasets": [{"path": "a", "weight": 0}]}, "data.datasets[0].weight"),
        ({"kind": "prepared", "datasets": [{"weight": 1.0}]}, "data.datasets[0].path"),
        ({"kind": "prepared", "datasets": [{"path": "a"}, {"path": "a"}]}, "data.datasets[1].path"),
        ({"kind": "prepared", "datasets": [{"path": "a", "wieght": 1}]}, "data.datasets[0].wieght"),
        ({"validation_fraction": 0.0}, "data.validation_fraction"),
        ({"validation_fraction": 0.9}, "data.validation_fraction"),
        ({"seed": -1}, "data.seed"),
        ({"workers": 0}, "data.workers"),
        ({"tokenizer": 5}, "data.tokenizer"),
        # honoured or refused: datasets are read only by kind prepared; mock data has no documents
        ({"kind": "default", "datasets": [{"path": "a"}]}, "data.datasets"),
        ({"reset_at_eos": True}, "data.reset_at_eos"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError) as info:
        from_dict(DataConfig, data, "data")
    assert info.value.key == key
