"""Independent reference solvers for the generated IQ subtasks (test code, not the generators).

Each solver reads only the prompt text, the way a perfect reader would, and returns the answer.
They are imported by the tests through the ``reference_solvers`` fixture in conftest.py.
"""

from __future__ import annotations

import re

BABI_MOVE = re.compile(r"^(\w+) (?:went to|journeyed to|travelled to|moved to|went back to) the (\w+)\.$")
BABI_PICK = re.compile(r"^(\w+) (?:got|grabbed|picked up|took) the (\w+) there\.$")
BABI_DROP = re.compile(r"^(\w+) (?:dropped|discarded|left|put down) the (\w+)(?: there)?\.$")


def blocks(prompt: str) -> list[str]:
    return prompt.split("\n\n")


def io_pairs(prompt: str) -> tuple[list[tuple[str, str]], str]:
    """Demonstrations as (input, output) and the query input, for "Input:/Output:" prompts."""
    demos, query = [], None
    for b in blocks(prompt):
        m = re.fullmatch(r"Input: (.*)\nOutput: (.*)", b)
        if m:
            demos.append((m.group(1), m.group(2)))
            continue
        m = re.fullmatch(r"Input: (.*)\nOutput:", b)
        if m:
            query = m.group(1)
    assert query is not None, "no query block"
    return demos, query


def solve_counting(prompt: str) -> str:
    m = re.search(r"Count from (\d+) to (\d+) in steps of (\d+)\.\nAnswer:$", prompt)
    a, b, s = map(int, m.groups())
    seq = list(range(a, b + 1, s)) if a <= b else list(range(a, b - 1, -s))
    assert seq[-1] == b
    return ", ".join(map(str, seq))


def solve_replace_lowercase(prompt: str) -> str:
    char = re.search(r'replace every lowercase letter with "(.)"', prompt).group(1)
    _, query = io_pairs(prompt)
    return re.sub(r"[a-z]", lambda _: char, query)


def solve_replace_word(prompt: str) -> str:
    w, r = re.search(r'replace the word "(\w+)" with the word "(\w+)"', prompt).groups()
    _, query = io_pairs(prompt)
    return re.sub(rf"\b{re.escape(w)}\b", r, query)


def solve_head_tail(prompt: str) -> str:
    demos, query = io_pairs(prompt)
    for i, o in demos:
        t = i.split()
        assert o == f"{t[0]} {t[-1]}", "demonstration inconsistent with head & tail"
    t = query.split()
    return f"{t[0]} {t[-1]}"


def solve_full_repeating(prompt: str) -> str:
    demos, query = io_pairs(prompt)
    times = {len(o.split()) // len(i.split()) for i, o in demos}
    assert len(times) == 1, "repeat count must be constant within an instance"
    (r,) = times
    for i, o in demos:
        assert o.split() == i.split() * r
    return " ".join(query.split() * r)


def solve_head_slicing(prompt: str) -> str:
    demos, query = io_pairs(prompt)
    ks = {len(o.split()) for _, o in demos}
    assert len(ks) == 1, "k must be constant within an instance"
    (k,) = ks
    for i, o in demos:
        assert o.split() == i.split()[:k]
    return " ".join(query.split()[:k])


def query_story(prompt: str) -> tuple[list[str], str]:
    last = blocks(prompt)[-1]
    lines = last.split("\n")
    assert lines[0] == "Story:" and lines[-1] == "Answer:" and lines[-2].startswith("Question: ")
    return lines[1:-2], lines[-2][len("Question: ") :]


def solve_mkr(prompt: str) -> str:
    lines, question = query_story(prompt)
    keys = {}
    for line in lines:
        m = re.fullmatch(r"The key of the (.+) is (\d+)\.", line)
        if m:
            assert m.group(1) not in keys
            keys[m.group(1)] = m.group(2)
    holder = re.fullmatch(r"What is the key of the (.+)\?", question).group(1)
    return keys[holder]


def solve_babi_single(lines: list[str], question: str) -> str:
    where = {}
    for line in lines:
        m = BABI_MOVE.match(line)
        assert m, f"unexpected sentence {line!r}"
        where[m.group(1)] = m.group(2)
    return where[re.fullmatch(r"Where is (\w+)\?", question).group(1)]


def solve_babi_two(lines: list[str], question: str) -> str:
    where, holder, placed = {}, {}, {}
    for line in lines:
        if m := BABI_MOVE.match(line):
            where[m.group(1)] = m.group(2)
        elif m := BABI_PICK.match(line):
            holder[m.group(2)] = m.group(1)
            placed.pop(m.group(2), None)
        elif m := BABI_DROP.match(line):
            holder.pop(m.group(2), None)
            placed[m.group(2)] = where.get(m.group(1))
        else:
            raise AssertionError(f"unexpected sentence {line!r}")
    obj = re.fullmatch(r"Where is the (\w+)\?", question).group(1)
    return where[holder[obj]] if obj in holder else placed[obj]


def solve_single_sf(prompt: str) -> str:
    return solve_babi_single(*query_story(prompt))


def solve_two_sf(prompt: str) -> str:
    return solve_babi_two(*query_story(prompt))


SOLVERS = {
    "counting": solve_counting,
    "replace_lowercase": solve_replace_lowercase,
    "replace_word": solve_replace_word,
    "head_tail": solve_head_tail,
    "full_repeating": solve_full_repeating,
    "head_slicing": solve_head_slicing,
    "multi_key_retrieval": solve_mkr,
    "single_supporting_fact": solve_single_sf,
    "two_supporting_facts": solve_two_sf,
}
