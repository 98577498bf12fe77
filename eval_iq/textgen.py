"""Shared assembly of few-shot generation prompts: demonstrations, then the query.

Every generation subtask formats one example as ``"<input label> <input>\\n<output label> <answer>"``
and the query the same way without the answer, so the prompt ends with the output label and the
model's continuation is the answer (e.g. ``"...\\nOutput:"`` -> ``" 3 9"``). Demonstrations never
repeat the query's input. In open-ended subtasks they never repeat its answer either (so the answer
never appears in an answer slot of the prompt); in closed-answer subtasks their answers are drawn
independently of the query's (see :func:`draw_shots`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eval_iq.instances import join_blocks, make_instance

MAX_TRIES = 10_000


@dataclass(frozen=True)
class Example:
    """One solved example: the text after the input label, the answer, generator details."""

    text: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


def format_example(ex: Example, in_label: str, out_label: str, with_answer: bool) -> str:
    """``in_label`` ending in a newline puts the input on the next line(s) (stories)."""
    sep = "" if in_label.endswith("\n") else " "
    block = f"{in_label}{sep}{ex.text}\n{out_label}"
    return f"{block} {ex.answer}" if with_answer else block


def draw_shots(
    rng: random.Random,
    query: Example,
    n_shots: int,
    make: Callable[[random.Random], Example],
    accept: Callable[[list[Example]], bool] | None = None,
    *,
    distinct_answers: bool = True,
) -> list[Example]:
    """Draw ``n_shots`` examples whose inputs differ from the query's and from each other.

    ``distinct_answers=True`` (open-ended subtasks: rules, patterns) also requires every answer
    to differ from the query's and from each other, so no answer slot of the prompt gives the
    query's answer away. ``distinct_answers=False`` (closed-answer subtasks, e.g. bAbI's six
    locations) leaves the demonstrations' answers as ``make`` draws them, independent of the
    query's: rejecting the query's answer there would let a model rule it out (raising chance)
    and make copying a demonstration's answer always wrong.

    ``accept`` may reject a complete shot list (e.g. "lengths must vary"); the draw is repeated.
    Raises ``RuntimeError`` if no acceptable list is found (a generator bug, not a user error).
    """
    for _ in range(MAX_TRIES):
        shots: list[Example] = []
        seen_text = {query.text}
        seen_answer = {query.answer}
        tries = 0
        while len(shots) < n_shots and tries < MAX_TRIES:
            tries += 1
            ex = make(rng)
            if ex.text in seen_text or (distinct_answers and ex.answer in seen_answer):
                continue
            seen_text.add(ex.text)
            seen_answer.add(ex.answer)
            shots.append(ex)
        if len(shots) == n_shots and (accept is None or accept(shots)):
            return shots
    raise RuntimeError("could not draw distinct demonstrations; the generator's space is too small")


def build_generation_instance(
    subtask: str,
    seed: int,
    index: int,
    query: Example,
    shots: list[Example],
    *,
    in_label: str,
    out_label: str,
    header: str | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble header, demonstrations and query into an instance (see :mod:`eval_iq.instances`)."""
    blocks = [header] if header else []
    blocks += [format_example(s, in_label, out_label, True) for s in shots]
    blocks.append(format_example(query, in_label, out_label, False))
    details = {"query": query.meta, "shots": [s.meta for s in shots], **(meta or {})}
    return make_instance(subtask, seed, index, join_blocks(blocks), query.answer, meta=details)
