"""Generated subtasks: independent solvers reproduce every gold answer; prompts never give the
answer away; demonstrations follow the spec; generation budgets fit every answer."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eval_iq.generate import generate
from eval_iq.registry import SUBTASKS
from eval_iq.scoring import exact_match, normalize_answer

GENERATED = [n for n, s in SUBTASKS.items() if s.category != "symbolic"]
RULES = ("counting", "replace_lowercase", "replace_word")
OUT_LABEL = {
    "counting": "Answer:",
    "multi_key_retrieval": "Answer:",
    "single_supporting_fact": "Answer:",
    "two_supporting_facts": "Answer:",
}


def answer_slots(prompt: str, label: str) -> list[str]:
    return [line[len(label) + 1 :] for line in prompt.split("\n") if line.startswith(label + " ")]


@pytest.mark.parametrize("name", GENERATED)
def test_reference_solver_reproduces_every_default_instance(name, reference_solvers):
    spec = SUBTASKS[name]
    instances = generate(name)
    assert len(instances) == spec.default_size
    solve = reference_solvers.SOLVERS[name]
    for inst in instances:
        assert solve(inst["prompt"]) == inst["answer"], inst["index"]
        assert inst["choices"] == [] and inst["gold"] == -1
        assert inst["subtask"] == name and inst["seed"] == 1234


@pytest.mark.parametrize("name", GENERATED)
def test_prompt_never_contains_the_answer(name):
    label = OUT_LABEL.get(name, "Output:")
    for inst in generate(name):
        prompt, answer = inst["prompt"], inst["answer"]
        assert prompt.endswith("\n" + label), "the prompt must end where the answer starts"
        if SUBTASKS[name].category != "anti_interference":  # closed answers may repeat (by design)
            assert answer not in answer_slots(prompt, label), "a demonstration gives the query's answer"
        if name in RULES:  # rule answers cannot occur naturally in the prompt
            assert answer not in prompt


@pytest.mark.parametrize("name", GENERATED)
def test_default_shot_counts(name):
    spec = SUBTASKS[name]
    label = OUT_LABEL.get(name, "Output:")
    for inst in generate(name, size=20):
        assert len(answer_slots(inst["prompt"], label)) == spec.default_shots
    for inst in generate(name, size=5, shots=3):
        assert len(answer_slots(inst["prompt"], label)) == 3


def test_head_slicing_demonstrations_show_varied_lengths():
    for inst in generate("head_slicing"):
        lengths = {len(b.split("\n")[0].split()) for b in inst["prompt"].split("\n\n")[:-1]}
        assert len(lengths) >= 2


def test_pattern_elements_vary_across_instances():
    kinds = {
        json.loads(i["meta"])["kind"] for n in ("head_tail", "full_repeating", "head_slicing") for i in generate(n)
    }
    assert kinds == {"numbers", "letters", "words"}


def test_counting_covers_both_directions():
    ups = downs = 0
    for inst in generate("counting"):
        a, b = map(int, re.search(r"Count from (\d+) to (\d+)", inst["prompt"]).groups())
        ups += a < b
        downs += a > b
    assert ups > 30 and downs > 30


@pytest.mark.parametrize("name", ["single_supporting_fact", "two_supporting_facts"])
def test_babi_answers_spread_over_locations(name):
    counts: dict[str, int] = {}
    for inst in generate(name):
        counts[inst["answer"]] = counts.get(inst["answer"], 0) + 1
    assert len(counts) == 6 and max(counts.values()) < 0.3 * 300  # no location dominates


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(GENERATED), seed=st.integers(0, 10**9), index=st.integers(0, 10**5))
def test_any_seed_and_index_is_solvable_and_fits_the_budget(name, seed, index, reference_solvers):
    from eval_iq.generate import GENERATORS

    spec = SUBTASKS[name]
    inst = GENERATORS[name](seed, index, spec.default_shots)
    assert reference_solvers.SOLVERS[name](inst["prompt"]) == inst["answer"]
    # one token per character (plus a leading space and the stop newline) must fit
    assert len(inst["answer"]) + 2 <= spec.max_gen_toks


def test_generation_budget_fits_longest_answers():
    for name in GENERATED:
        longest = max(len(i["answer"]) for i in generate(name, size=1000))
        assert longest + 2 <= SUBTASKS[name].max_gen_toks, name


@pytest.mark.parametrize(
    ("prediction", "gold", "ok"),
    [
        (" 1, 2, 3.", "1, 2, 3", True),
        ("1,  2,\n3", "1, 2, 3", True),
        ("kitchen", "kitchen.", True),
        ("Kitchen", "kitchen", False),
        ("1,2,3", "1, 2, 3", False),
        ("kitchen..", "kitchen", False),
        ("", "kitchen", False),
    ],
)
def test_exact_match_normalisation(prediction, gold, ok):
    assert exact_match(prediction, gold) is ok
    assert normalize_answer(" a \t b. ") == "a b"
