"""The data position across a blend change (training.data.position, docs/data.md "Data per stage"):
a stage that changes the blend starts the new blend's order at its first sample and continues every
dataset where the previous stages left it; the same blend keeps the stream of a run without stages;
a checkpoint's recorded position resumes exactly, also inside a stage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data.blend import BlendedSource
from training.data.position import DataPosition
from training.errors import DataError

CHUNK = 64


class Counter:
    """Dataset ``ident``: its sample i is [ident, i, 0, 0]."""

    def __init__(self, ident: int):
        self.ident = ident
        self.seq_length = 3

    def sample(self, index: int) -> np.ndarray:
        return np.array([self.ident, index, 0, 0], dtype=np.int64)


def blend(weights: dict[int, float], tokenizer: str = "tok") -> BlendedSource:
    """A blend of the Counter datasets ``weights`` names (dataset i is known as ``ds<i>``)."""
    idents = list(weights)
    return BlendedSource(
        [Counter(i) for i in idents],
        [weights[i] for i in idents],
        seed=[7, 0],
        chunk=CHUNK,
        keys=[f"ds{i}" for i in idents],
        tokenizer=tokenizer,
    )


def read(source: BlendedSource, start: int, stop: int) -> list[tuple[int, int]]:
    return [(int(s[0]), int(s[1])) for s in (source.sample(g) for g in range(start, stop))]


def saved(source: BlendedSource) -> DataPosition:
    """The position as a checkpoint records it (through JSON)."""
    return DataPosition.from_dict(json.loads(json.dumps(source.position.to_dict())))


def test_a_new_blend_starts_its_order_at_the_stage_and_continues_each_dataset():
    # stage 0: datasets 0 and 1 at 1:1 for 100 samples (a chunk and a half: cursors inside a chunk)
    s0 = blend({0: 1, 1: 1})
    first = read(s0, 0, 100)
    # stage 1: dataset 1 at 3, dataset 2 joins at 1; dataset 0 leaves
    s1 = blend({1: 3, 2: 1})
    position = s1.enter(saved(s0), 100)
    taken = {d: sum(1 for x, _ in first if x == d) for d in (0, 1)}
    assert position.origin == 100 and dict(position.cursors) == {"ds0": taken[0], "ds1": taken[1]}
    second = read(s1, 100, 300)
    # the stage's blend order from its own first sample: local sample l is the blend's sample l
    assert [d for d, _ in second] == [[1, 2][blend({1: 3, 2: 1}).locate(local)[0]] for local in range(200)]
    # each dataset continues where it stopped: no sample twice, none skipped
    for d in (1, 2):
        seen = [i for x, i in first + second if x == d]
        assert seen == list(range(len(seen)))
    # stage 2: dataset 0 comes back at its cursor, dataset 1 continues
    s2 = blend({0: 1, 1: 1})
    s2.enter(saved(s1), 300)
    third = read(s2, 300, 400)
    for d in (0, 1, 2):
        seen = [i for x, i in first + second + third if x == d]
        assert seen == list(range(len(seen))), d


def test_the_same_blend_keeps_the_stream_of_a_run_without_stages():
    plain = read(blend({0: 2, 1: 1}), 0, 300)
    s0 = blend({0: 2, 1: 1})
    assert read(s0, 0, 120) == plain[:120]
    s1 = blend({0: 2, 1: 1})
    assert s1.enter(saved(s0), 120) == s0.position  # not re-based: origin 0, no cursors
    assert read(s1, 120, 300) == plain[120:]
    # only the weights change: re-based, both datasets continue
    s2 = blend({0: 1, 1: 2})
    assert s2.enter(saved(s1), 300).origin == 300
    seen = plain + read(s2, 300, 400)
    for d in (0, 1):
        got = [i for x, i in seen if x == d]
        assert got == list(range(len(got)))


def test_a_resume_inside_a_stage_continues_exactly():
    s0 = blend({0: 1})
    read(s0, 0, 40)
    s1 = blend({0: 1, 1: 1})
    s1.enter(saved(s0), 40)
    uninterrupted = read(s1, 40, 200)
    # a checkpoint inside the stage (step at 93 samples) resumed by a fresh source, read backwards too
    s1.enter(saved(s1), 93)  # entering its own position is a no-op
    checkpoint = saved(s1)
    fresh = blend({0: 1, 1: 1})
    fresh.enter(checkpoint, 93)
    assert [tuple(int(v) for v in fresh.sample(g)[:2]) for g in reversed(range(93, 200))][::-1] == uninterrupted[53:]
    # a resume with an edited blend is a blend change at the resume point
    edited = blend({0: 1, 1: 1, 2: 1})
    assert edited.enter(checkpoint, 93).origin == 93


def test_taken_counts_whole_and_partial_chunks():
    source = blend({0: 5, 1: 2, 2: 1})
    labels = [source.locate(g)[0] for g in range(3 * CHUNK + 17)]
    for n in (0, 1, CHUNK, 2 * CHUNK + 5, 3 * CHUNK + 17):
        assert source.spec.taken(n) == {f"ds{d}": labels[:n].count(d) for d in range(3)}


def test_reading_before_the_origin_and_another_tokenizer_are_refused():
    s0 = blend({0: 1})
    s1 = blend({0: 1, 1: 1})
    s1.enter(saved(s0), 50)
    with pytest.raises(IndexError, match="precedes the blend's origin 50"):
        s1.sample(49)
    with pytest.raises(DataError, match="every stage of a run must use the same tokenizer"):
        blend({1: 1}, tokenizer="other").enter(saved(s0), 50)


def test_a_dataset_listed_twice_is_refused():
    with pytest.raises(DataError, match="the same dataset twice"):
        BlendedSource([Counter(0), Counter(0)], [1, 1], seed=[1], keys=["a", "a"])
