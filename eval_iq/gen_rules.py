"""Rule understanding: the prompt states a rule, the model applies it (Counting, Replace-*).

* Counting: "Count from A to B in steps of S." (ascending or descending); the answer is the full
  sequence written ``"A, A+S, ..., B"``. Default 0-shot, so the header states the output format.
* Replace-Lowercase: a random mixed string of letters and digits; every lowercase letter is
  replaced with the character the rule names. The rule's character is fixed within an instance.
* Replace-Word: a template sentence with two different nouns, one of them the given word; that
  word (whole word) is replaced with another given word. The word pair is fixed within an
  instance. All words start with a consonant, so articles stay grammatical after replacement.
"""

from __future__ import annotations

import random
import string
from typing import Any

from eval_iq.instances import instance_rng
from eval_iq.textgen import Example, build_generation_instance, draw_shots


# --------------------------------------------------------------------------- counting
def _counting_example(rng: random.Random) -> Example:
    step = rng.randint(1, 9)
    count = rng.randint(4, 10)
    span = step * (count - 1)
    if rng.random() < 0.5:
        start = rng.randint(0, 40)
        seq = [start + step * i for i in range(count)]
    else:
        end = rng.randint(0, 40)
        seq = [end + span - step * i for i in range(count)]
    text = f"Count from {seq[0]} to {seq[-1]} in steps of {step}."
    return Example(text, ", ".join(map(str, seq)), {"start": seq[0], "end": seq[-1], "step": step})


def counting(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    rng = instance_rng("counting", seed, index, attempt)
    query = _counting_example(rng)
    demos = draw_shots(rng, query, shots, _counting_example)
    header = "Answer with the whole sequence on one line, numbers separated by a comma and a space."
    return build_generation_instance(
        "counting", seed, index, query, demos, in_label="Question:", out_label="Answer:", header=header
    )


# --------------------------------------------------------------------------- replace-lowercase
REPLACEMENT_CHARS = "#*@$%&+=?!~^"
_MIXED = string.ascii_letters + string.digits


def _mixed_string(rng: random.Random) -> str:
    while True:
        s = "".join(rng.choice(_MIXED) for _ in range(rng.randint(6, 12)))
        if any(c.islower() for c in s) and any(not c.islower() for c in s):
            return s


def replace_lowercase(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    rng = instance_rng("replace_lowercase", seed, index, attempt)
    char = rng.choice(REPLACEMENT_CHARS)

    def make(r: random.Random) -> Example:
        s = _mixed_string(r)
        return Example(s, "".join(char if c.islower() else c for c in s))

    query = make(rng)
    demos = draw_shots(rng, query, shots, make)
    header = f'Rule: replace every lowercase letter with "{char}" and keep every other character unchanged.'
    return build_generation_instance(
        "replace_lowercase",
        seed,
        index,
        query,
        demos,
        in_label="Input:",
        out_label="Output:",
        header=header,
        meta={"char": char},
    )


# --------------------------------------------------------------------------- replace-word
TARGET_WORDS = (
    "cat",
    "dog",
    "bird",
    "horse",
    "teacher",
    "doctor",
    "farmer",
    "child",
    "window",
    "table",
    "letter",
    "train",
    "pillow",
    "basket",
    "candle",
    "mirror",
    "rabbit",
    "bottle",
    "hat",
    "coat",
    "lamp",
    "boat",
    "clock",
    "drum",
    "flower",
    "stone",
    "cup",
    "book",
    "sailor",
    "baker",
)
REPLACEMENT_WORDS = (
    "piano",
    "tiger",
    "rocket",
    "pencil",
    "saddle",
    "camera",
    "wizard",
    "planet",
    "banana",
    "violin",
    "castle",
    "dragon",
    "helmet",
    "kettle",
    "ladder",
    "comet",
    "parrot",
    "wagon",
)
ADJECTIVES = ("calm", "small", "quiet", "bright", "green", "tired", "happy", "heavy", "little", "brave")
PLACES = ("market", "station", "bridge", "forest", "harbor", "school", "village", "library", "road", "square")
VERBS = ("saw", "found", "carried", "painted", "watched", "followed", "cleaned", "moved")
# Each template has exactly two noun slots ({n0}, {n1}); the rule's word fills one of them and the
# other gets a different noun. Every noun and adjective starts with a consonant, so the article
# "a" stays right after any replacement (no "a anchor").
SENTENCE_TEMPLATES = (
    "The {adj} {n0} {verb} a {n1} near the {place}.",
    "A {n0} {verb} the {n1} at the {place}.",
    "Yesterday the {n0} {verb} the {adj} {n1}.",
    "Near the {place}, a {adj} {n0} {verb} the {n1}.",
    "The {n0} and the {n1} waited by the {place}.",
    "Every morning the {n0} {verb} a {n1} near the {place}.",
    "In the {place} the {n0} quietly {verb} a {adj} {n1}.",
)


def replace_word(seed: int, index: int, shots: int, attempt: int = 0) -> dict[str, Any]:
    rng = instance_rng("replace_word", seed, index, attempt)
    word = rng.choice(TARGET_WORDS)
    repl = rng.choice(REPLACEMENT_WORDS)
    others = [w for w in TARGET_WORDS if w != word]

    def make(r: random.Random) -> Example:
        template = r.choice(SENTENCE_TEMPLATES)
        slots = r.choice([(0,), (1,)])
        fill = {"adj": r.choice(ADJECTIVES), "verb": r.choice(VERBS), "place": r.choice(PLACES)}
        nouns = [word if i in slots else r.choice(others) for i in range(2)]
        source = template.format(**fill, n0=nouns[0], n1=nouns[1])
        target = template.format(**fill, **{f"n{i}": repl if i in slots else nouns[i] for i in range(2)})
        return Example(source, target, {"template": template, "slots": list(slots)})

    query = make(rng)
    demos = draw_shots(rng, query, shots, make)
    header = f'Rule: replace the word "{word}" with the word "{repl}" and keep everything else unchanged.'
    return build_generation_instance(
        "replace_word",
        seed,
        index,
        query,
        demos,
        in_label="Input:",
        out_label="Output:",
        header=header,
        meta={"word": word, "replacement": repl},
    )
