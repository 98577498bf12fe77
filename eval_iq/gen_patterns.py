"""Pattern mining: the rule is never stated; the model must induce it from the demonstrations.

Each instance picks one element kind (numbers 0-99, lowercase letters, or short words) and one
hidden parameter; sequences hold distinct elements separated by single spaces.

* Head & Tail: output the first and the last element.
* Full Repeating: output the whole input repeated ``r`` times (``r`` in {2, 3}, fixed per instance).
* Head Slicing: output the first ``k`` elements (``k`` in {2, 3, 4}, fixed per instance); the
  demonstrations always show at least two different input lengths, so "drop the last m elements"
  is not an equally good explanation of them.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

from eval_iq.instances import instance_rng
from eval_iq.textgen import Example, build_generation_instance, draw_shots

WORDS = (
    "apple",
    "river",
    "cloud",
    "stone",
    "tiger",
    "lemon",
    "paper",
    "chair",
    "music",
    "ocean",
    "pencil",
    "garden",
    "silver",
    "window",
    "rocket",
    "candle",
    "forest",
    "bridge",
    "island",
    "spoon",
    "violin",
    "planet",
    "mirror",
    "castle",
    "honey",
    "desert",
    "anchor",
    "basket",
    "feather",
    "lantern",
    "meadow",
    "pepper",
    "saddle",
    "thunder",
    "walnut",
    "zebra",
)
ELEMENT_POOLS: dict[str, tuple[str, ...]] = {
    "numbers": tuple(str(i) for i in range(100)),
    "letters": tuple(string.ascii_lowercase),
    "words": WORDS,
}


def _instance(
    subtask: str,
    seed: int,
    index: int,
    shots: int,
    make_for: Callable[[random.Random, tuple[str, ...]], Callable[[random.Random], Example]],
    accept: Callable[[list[Example]], bool] | None = None,
    attempt: int = 0,
) -> dict[str, Any]:
    rng = instance_rng(subtask, seed, index, attempt)
    kind = rng.choice(sorted(ELEMENT_POOLS))
    make = make_for(rng, ELEMENT_POOLS[kind])
    query = make(rng)
    demos = draw_shots(rng, query, shots, make, accept)
    return build_generation_instance(
        subtask, seed, index, query, demos, in_label="Input:", out_label="Output:", meta={"kind": kind}
    )


def head_tail(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    def make_for(rng: random.Random, pool: tuple[str, ...]):
        def make(r: random.Random) -> Example:
            seq = r.sample(pool, r.randint(3, 8))
            return Example(" ".join(seq), f"{seq[0]} {seq[-1]}")

        return make

    return _instance("head_tail", seed, index, shots, make_for, attempt=attempt)


def full_repeating(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    def make_for(rng: random.Random, pool: tuple[str, ...]):
        times = rng.choice((2, 3))

        def make(r: random.Random) -> Example:
            seq = r.sample(pool, r.randint(2, 5))
            return Example(" ".join(seq), " ".join(seq * times), {"times": times})

        return make

    return _instance("full_repeating", seed, index, shots, make_for, attempt=attempt)


def head_slicing(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    def make_for(rng: random.Random, pool: tuple[str, ...]):
        k = rng.choice((2, 3, 4))

        def make(r: random.Random) -> Example:
            seq = r.sample(pool, r.randint(k + 1, k + 5))
            return Example(" ".join(seq), " ".join(seq[:k]), {"k": k})

        return make

    def lengths_vary(demos: list[Example]) -> bool:
        return len(demos) < 2 or len({len(d.text.split()) for d in demos}) >= 2

    return _instance("head_slicing", seed, index, shots, make_for, lengths_vary, attempt)
