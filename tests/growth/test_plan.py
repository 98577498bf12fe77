"""Plans: YAML loading, and a clear ConfigError (naming the key) for every invalid plan."""

from __future__ import annotations

import copy

import pytest

from growth import GrowthPlan, ModelShape, check_plan, load_plan
from tests.growth.helpers import make_cfg
from training.config_base import ConfigError

OLD = {"layers": 2, "hidden": 16, "ffn": 24, "heads": 4, "query_groups": 4, "head_dim": 4, "vocab": 56}
PLAN = {
    "old": OLD,
    "new": {**OLD, "layers": 4, "hidden": 32, "ffn": 48, "heads": 8, "query_groups": 8},
    "operators": {"hidden": "msg", "ffn": "msg", "heads": "msg", "depth": "msg"},
    "depth": {"placement": "interleave", "init": "copy"},
    "ramp": {"steps": 100, "shape": "linear"},
    "init_std": 0.02,
    "seed": 3,
    "tp": 2,
}

YAML = """
old: {layers: 2, hidden: 16, ffn: 24, heads: 4, query_groups: 4, head_dim: 4, vocab: 56}
new: {layers: 4, hidden: 32, ffn: 48, heads: 8, query_groups: 8, head_dim: 4, vocab: 56}
operators: {hidden: msg, ffn: msg, heads: msg, depth: msg}
depth: {placement: interleave, init: copy}
ramp: {steps: 100, shape: linear}
init_std: 2e-2
seed: 3
tp: 2
"""


def with_(path: str, value):
    plan = copy.deepcopy(PLAN)
    node = plan
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    if value is None:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return plan


def test_yaml_plan_loads(tmp_path):
    f = tmp_path / "grow.yaml"
    f.write_text(YAML)
    plan = load_plan(f)
    assert plan == load_plan(PLAN)
    assert plan.old == ModelShape(**OLD)
    assert plan.operators.depth == "msg" and plan.depth.placement == "interleave" and plan.ramp.steps == 100
    assert plan.init_std == 0.02 and plan.exact is True and plan.uses_masks


def test_yaml_errors_name_the_file(tmp_path):
    f = tmp_path / "grow.yaml"
    f.write_text(YAML.replace("hidden: msg", "hidden: grow"))
    with pytest.raises(ConfigError, match=r"grow\.yaml: config key 'operators\.hidden': got 'grow'; allowed"):
        load_plan(f)
    with pytest.raises(ConfigError, match="not found"):
        load_plan(tmp_path / "missing.yaml")


INVALID = [
    ("missing old", with_("old", None), "old.layers", "required"),
    ("missing shape field", with_("new.ffn", None), "new.ffn", "required"),
    ("unknown key", with_("ramp.length", 3), "ramp.length", "unknown key"),
    ("unknown operator", with_("operators.depth", "clone"), "operators.depth", "allowed values"),
    ("shrink", with_("new.ffn", 16), "new.ffn", "never shrinks"),
    ("shrink layers", with_("new.layers", 1), "new.layers", "never shrinks"),
    ("head dim", with_("new.head_dim", 8), "new.head_dim", "head dim"),
    ("tp heads", with_("tp", 3), "new.heads", "not divisible by the target tp=3"),
    ("tp ffn", with_("new.ffn", 51), "new.ffn", "not divisible by the target tp=2"),
    ("grows without operator", with_("operators.ffn", "none"), "operators.ffn", "needs an operator"),
    ("operator without growth", {**with_("new.ffn", 24)}, "operators.ffn", "does not change; use none"),
    (
        "clone factor",
        {**with_("operators.hidden", "clone"), "new": {**PLAN["new"], "hidden": 24}},
        "new.hidden",
        "integer factor",
    ),
    (
        "clone heads",
        {**with_("operators.heads", "clone"), "new": {**PLAN["new"], "heads": 12, "query_groups": 6}},
        "new.heads",
        "integer factor",
    ),
    (
        "group shrinks",
        {**PLAN, "old": {**OLD, "query_groups": 2}, "new": {**PLAN["new"], "heads": 8, "query_groups": 8}},
        "new.query_groups",
        "shrink",
    ),
    (
        "stack factor",
        {**with_("operators.depth", "stack"), "exact": False, "new": {**PLAN["new"], "layers": 3}},
        "new.layers",
        "multiple",
    ),
    (
        "stack fresh",
        {**with_("operators.depth", "stack"), "exact": False, "depth": {"init": "fresh"}},
        "depth.init",
        "use copy",
    ),
    ("stack is inexact", with_("operators.depth", "stack"), "operators.depth", "exact: false"),
    ("ramp", with_("ramp.steps", 0), "ramp.steps", "at least 1 step"),
    ("ramp shape", with_("ramp.shape", "step"), "ramp.shape", "allowed values"),
    ("init std", with_("init_std", 0.0), "init_std", "> 0"),
    ("noise sign", with_("clone_noise", -1.0), "clone_noise", ">= 0"),
    ("noise without clone", with_("clone_noise", 0.1), "clone_noise", "only applies to clone"),
    ("noise is inexact", {**with_("operators.hidden", "clone"), "clone_noise": 0.1}, "clone_noise", "exact: false"),
    ("tp zero", with_("tp", 0), "tp", ">= 1"),
    ("wrong type", with_("exact", "yes"), "exact", "true or false"),
]


@pytest.mark.parametrize("data,key,message", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_plans_are_refused_clearly(data, key, message):
    with pytest.raises(ConfigError) as err:
        load_plan(data)
    assert err.value.key == key
    assert message in err.value.message


def test_inexact_plans_load_with_exact_false():
    for data in (
        with_("operators.depth", "stack"),
        {**with_("operators.hidden", "clone"), "clone_noise": 0.1},
        {**PLAN, "new": {**PLAN["new"], "query_groups": 4}},
    ):
        assert load_plan({**data, "exact": False}).exact is False


def test_check_plan_against_model_config():
    cfg = make_cfg()
    plan = load_plan({**PLAN, "new": {**PLAN["new"], "vocab": 64}})
    new = check_plan(plan, cfg)
    assert (new.num_layers, new.hidden_size, new.ffn_hidden_size, new.num_attention_heads) == (4, 32, 48, 8)
    assert new.head_dim == 4 and new.query_groups == 8 and new.vocab_size == cfg.vocab_size
    with pytest.raises(ConfigError) as err:
        check_plan(load_plan({**with_("old.ffn", 20), "new": {**PLAN["new"], "vocab": 64}}), cfg)
    assert err.value.key == "growth.old.ffn" and "the model being grown has 24" in err.value.message


def test_check_plan_vocab_padding():
    cfg = make_cfg()  # vocab 50, padded to a multiple of 8 x tp
    ok = load_plan({**PLAN, "new": {**PLAN["new"], "vocab": 64}})  # tp=2 -> 64
    check_plan(ok, cfg)
    with pytest.raises(ConfigError) as err:
        check_plan(load_plan(PLAN), cfg)  # new.vocab 56 but tp=2 pads to 64
    assert err.value.key == "growth.new.vocab" and "set new.vocab: 64" in err.value.message
    with pytest.raises(ConfigError) as err:
        check_plan(load_plan({**with_("old.vocab", 40), "new": {**PLAN["new"], "vocab": 64}}), cfg)
    assert err.value.key == "growth.old.vocab"


def test_zero_hidden_refused_for_layernorm_only():
    data = {**with_("operators.hidden", "zero"), "new": {**PLAN["new"], "vocab": 64}}
    with pytest.raises(ConfigError) as err:
        check_plan(load_plan(data), make_cfg(normalization="LayerNorm"))
    assert err.value.key == "growth.operators.hidden" and "LayerNorm" in err.value.message
    check_plan(load_plan({**data, "exact": False}), make_cfg(normalization="LayerNorm"))
    check_plan(load_plan(data), make_cfg(normalization="RMSNorm"))


def test_programmatic_plan_is_validated_by_check_plan():
    plan = GrowthPlan(old=ModelShape(**OLD), new=ModelShape(**{**OLD, "hidden": 8}))
    with pytest.raises(ConfigError, match="never shrinks"):
        check_plan(plan, make_cfg())


def test_a_plan_and_a_stage_growth_section_share_options_and_defaults():
    """One growth vocabulary: a plan file's options are a staged run's ``growth:`` options (same
    names, same defaults); a dimension left out gets default_operator when it grows, none otherwise."""
    import dataclasses

    from training.config import GrowthOptions, StageGrowthConfig

    shared = {f.name: f.default for f in dataclasses.fields(GrowthOptions) if f.default is not dataclasses.MISSING}
    for cls in (GrowthPlan, StageGrowthConfig):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert {name: fields[name].default for name in shared} == shared
        assert fields["ramp"].default_factory().steps == 200
        assert fields["depth"].default_factory().placement == "interleave"
    plan = load_plan({"old": OLD, "new": {**OLD, "hidden": 32, "ffn": 32}, "operators": {"ffn": "zero"}})
    assert (plan.operators.hidden, plan.operators.ffn, plan.operators.heads, plan.operators.depth) == (
        "msg",
        "zero",
        "none",
        "none",
    )
    with pytest.raises(ConfigError) as info:
        load_plan({"old": OLD, "new": {**OLD, "hidden": 32}, "default_operator": "none"})
    assert info.value.key == "operators.hidden" and "needs an operator" in str(info.value)
