"""Anti-interference: answer from the one or two facts that matter in a noisy story.

Stories are written one sentence per line, followed by ``Question: ...`` and ``Answer:``; the
default 2 demonstrations are complete solved stories of the same kind. Demonstration stories differ
from the query's; their answers are drawn independently of the query's answer (a demonstration may
share it, as in real bAbI), so copying a demonstration's answer scores chance, not zero.

* Multiple Key Retrieval: four "The key of the <colour> <container> is <NNNN>." facts hidden among
  6-10 distractors (positions, other people's actions, and look-alike "code" facts, sometimes
  about the same containers). The question asks for one of the four keys.
* Single Supporting Fact: bAbI task 1 world: four people move between six locations (bAbI's
  names, places and verbs); "Where is X?" asks for X's latest location.
* Two Supporting Facts: bAbI task 2 world: people also pick up and drop the apple, the football
  and the milk; "Where is the O?" asks for the object's location, which needs the pick-up/drop
  fact and the carrier's move. Only objects that were picked up at least once are asked about.
"""

from __future__ import annotations

import random
from typing import Any

from eval_iq.instances import instance_rng
from eval_iq.textgen import Example, build_generation_instance, draw_shots

# bAbI v1.1 vocabulary (tasks 1 and 2); tests check it against ../shared/data/babi.
PEOPLE = ("Mary", "John", "Sandra", "Daniel")
LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
MOVE_VERBS = ("went to", "journeyed to", "travelled to", "moved to", "went back to")
OBJECTS = ("apple", "football", "milk")
PICK_VERBS = ("got", "grabbed", "picked up", "took")
DROP_VERBS = ("dropped", "discarded", "left", "put down")

# Multiple key retrieval vocabulary.
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "purple", "orange", "silver", "golden")
CONTAINERS = ("box", "chest", "drawer", "safe", "cabinet", "locker", "trunk", "case")
ROOMS = ("attic", "cellar", "library", "workshop", "garage", "studio", "pantry", "porch")
ANIMALS = ("cat", "dog", "parrot", "hamster", "rabbit", "turtle")
N_KEYS = 4


def _story_example(lines: list[str], question: str, answer: str, meta: dict[str, Any]) -> Example:
    # The input label "Story:" stands on its own line; the question ends the input.
    text = "\n".join(lines) + f"\nQuestion: {question}"
    return Example(text, answer, meta)


def _build(subtask: str, seed: int, index: int, shots: int, attempt: int, make) -> dict[str, Any]:
    rng = instance_rng(subtask, seed, index, attempt)
    query = make(rng)
    # closed answers (a location, one of the stated keys): only the stories must differ; the
    # demonstrations' answers follow the generator's distribution, independent of the query's
    demos = draw_shots(rng, query, shots, make, distinct_answers=False)
    return build_generation_instance(subtask, seed, index, query, demos, in_label="Story:\n", out_label="Answer:")


# --------------------------------------------------------------------------- multi-key retrieval
def _mkr_example(rng: random.Random) -> Example:
    holders = rng.sample([f"{c} {k}" for c in COLOURS for k in CONTAINERS], N_KEYS + 2)
    key_holders, other_holders = holders[:N_KEYS], holders[N_KEYS:]
    numbers = rng.sample(range(1000, 10000), N_KEYS + 12)
    keys = dict(zip(key_holders, map(str, numbers[:N_KEYS])))
    spare = [str(n) for n in numbers[N_KEYS:]]
    lines = [f"The key of the {h} is {k}." for h, k in keys.items()]
    coded: set[str] = set()  # at most one look-alike "code" fact per container
    for _ in range(rng.randint(6, 10)):
        form = rng.randrange(5)
        h = rng.choice(holders)
        if form in (0, 1) and (form == 0 or h in coded):
            lines.append(f"The {h} is in the {rng.choice(ROOMS)}.")
        elif form == 1 and h not in coded:
            coded.add(h)
            lines.append(f"The code of the {h} is {spare.pop()}.")
        elif form == 2:
            lines.append(f"{rng.choice(PEOPLE)} opened the {h} in the {rng.choice(ROOMS)}.")
        elif form == 3:
            lines.append(f"The {rng.choice(ANIMALS)} slept next to the {h}.")
        else:
            lines.append(f"The number on the {rng.choice(other_holders)} is {spare.pop()}.")
    rng.shuffle(lines)
    target = rng.choice(key_holders)
    return _story_example(lines, f"What is the key of the {target}?", keys[target], {"target": target})


def multi_key_retrieval(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    return _build("multi_key_retrieval", seed, index, shots, attempt, _mkr_example)


# --------------------------------------------------------------------------- single supporting fact
def _move(rng: random.Random, person: str, where: dict[str, str]) -> str:
    choices = [loc for loc in LOCATIONS if loc != where.get(person)]
    where[person] = rng.choice(choices)
    return f"{person} {rng.choice(MOVE_VERBS)} the {where[person]}."


def _single_sf_example(rng: random.Random) -> Example:
    where: dict[str, str] = {}
    lines = [_move(rng, rng.choice(PEOPLE), where) for _ in range(rng.randint(4, 10))]
    person = rng.choice(sorted(where))
    return _story_example(lines, f"Where is {person}?", where[person], {"person": person})


def single_supporting_fact(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    return _build("single_supporting_fact", seed, index, shots, attempt, _single_sf_example)


# --------------------------------------------------------------------------- two supporting facts
def _two_sf_story(rng: random.Random) -> tuple[list[str], dict[str, str], dict[str, str | None], set[str]]:
    where: dict[str, str] = {}  # person -> location
    holder: dict[str, str | None] = {o: None for o in OBJECTS}  # object -> person carrying it
    placed: dict[str, str] = {}  # object -> location where it lies (when not carried)
    picked: set[str] = set()
    lines: list[str] = []
    for _ in range(rng.randint(6, 14)):
        pickable = [
            (p, o) for p in sorted(where) for o in OBJECTS if holder[o] is None and placed.get(o, where[p]) == where[p]
        ]
        droppable = [(p, o) for o in OBJECTS if (p := holder[o]) is not None]
        roll = rng.random()
        if pickable and roll < 0.3:
            p, o = rng.choice(pickable)
            holder[o] = p
            placed.pop(o, None)
            picked.add(o)
            lines.append(f"{p} {rng.choice(PICK_VERBS)} the {o} there.")
        elif droppable and roll < 0.45:
            p, o = rng.choice(droppable)
            holder[o] = None
            placed[o] = where[p]
            tail = " there" if rng.random() < 0.25 else ""
            lines.append(f"{p} {rng.choice(DROP_VERBS)} the {o}{tail}.")
        else:
            lines.append(_move(rng, rng.choice(PEOPLE), where))
    location = {o: where[h] if (h := holder[o]) is not None else placed.get(o, "") for o in OBJECTS}
    return lines, location, holder, picked


def _two_sf_example(rng: random.Random) -> Example:
    while True:
        lines, location, holder, picked = _two_sf_story(rng)
        if picked:
            obj = rng.choice(sorted(picked))
            return _story_example(
                lines, f"Where is the {obj}?", location[obj], {"object": obj, "carried_by": holder[obj]}
            )


def two_supporting_facts(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    return _build("two_supporting_facts", seed, index, shots, attempt, _two_sf_example)
