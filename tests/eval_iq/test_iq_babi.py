"""bAbI realism: the reference solvers reproduce the real bAbI v1.1 answers, and the generated
stories use bAbI's vocabulary and sentence shapes."""

from __future__ import annotations

import pytest

from eval_iq.babi import load_babi, vocabulary
from eval_iq.errors import DataNotFoundError, MalformedDataError
from eval_iq.generate import generate

FILES = {
    "single": ("qa1_single-supporting-fact_train.txt", "qa1_single-supporting-fact_test.txt"),
    "two": ("qa2_two-supporting-facts_train.txt", "qa2_two-supporting-facts_test.txt"),
}


@pytest.mark.parametrize("kind", ["single", "two"])
def test_reference_solver_matches_real_babi(kind, babi_dir, reference_solvers):
    solve = reference_solvers.solve_babi_single if kind == "single" else reference_solvers.solve_babi_two
    for name in FILES[kind]:
        questions = load_babi(babi_dir / name)
        assert len(questions) == 1000
        for q in questions:
            assert solve(list(q.story), q.question) == q.answer


@pytest.mark.parametrize(("subtask", "kind"), [("single_supporting_fact", "single"), ("two_supporting_facts", "two")])
def test_generated_stories_speak_babi(subtask, kind, babi_dir, reference_solvers):
    real = [q for name in FILES[kind] for q in load_babi(babi_dir / name)]
    real_vocab = vocabulary([s for q in real for s in q.story] + [q.question for q in real])
    real_answers = {q.answer for q in real}
    patterns = [reference_solvers.BABI_MOVE] + (
        [reference_solvers.BABI_PICK, reference_solvers.BABI_DROP] if kind == "two" else []
    )
    for inst in generate(subtask):
        for block in inst["prompt"].split("\n\n"):
            lines = block.split("\n")
            story = lines[1:-2]
            assert all(any(p.match(s) for p in patterns) for s in story), story
            assert vocabulary(story + [lines[-2]]) - {"question"} <= real_vocab
        assert inst["answer"] in real_answers


def test_load_babi_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="not found"):
        load_babi(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("1 Mary went to the kitchen.\nthree Where is Mary?\tkitchen\t1\n")
    with pytest.raises(MalformedDataError, match=r"bad\.txt:2"):
        load_babi(bad)
    bad.write_text("1 Mary went to the kitchen.\n2 Where is Mary?\tkitchen\n")
    with pytest.raises(MalformedDataError, match="question<TAB>answer<TAB>ids"):
        load_babi(bad)
