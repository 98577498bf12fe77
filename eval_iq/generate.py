"""Entry point of the instance generators: ``generate(subtask, seed, size, shots, data_dir)``.

Generation-type subtasks are synthetic (no data needed); symbolic mapping reads its datasets
through :mod:`eval_iq.symbolic_data` (local directory, ``$FLM_IQ_DATA_DIR``, or the hub).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from eval_iq import gen_anti, gen_patterns, gen_rules
from eval_iq.errors import IQError
from eval_iq.instances import query_block
from eval_iq.registry import get_subtask
from eval_iq.symbolic import generate_symbolic

DEFAULT_SEED = 1234

#: ``make(seed, index, shots, attempt=0)`` -> instance; ``attempt`` selects an independent redraw
GENERATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "counting": gen_rules.counting,
    "replace_lowercase": gen_rules.replace_lowercase,
    "replace_word": gen_rules.replace_word,
    "head_tail": gen_patterns.head_tail,
    "full_repeating": gen_patterns.full_repeating,
    "head_slicing": gen_patterns.head_slicing,
    "multi_key_retrieval": gen_anti.multi_key_retrieval,
    "single_supporting_fact": gen_anti.single_supporting_fact,
    "two_supporting_facts": gen_anti.two_supporting_facts,
}

MAX_REDRAWS = 1000


def unique_instances(make: Callable[..., dict[str, Any]], seed: int, size: int, shots: int) -> list[dict[str, Any]]:
    """Instances ``0 .. size-1`` whose queries (:func:`eval_iq.instances.query_block`) all differ.

    Instance ``i`` is ``make``'s first draw (``attempt`` 0, 1, ...) whose query no earlier instance
    has. It depends on ``(seed, i, shots)`` and the instances before it, never on ``size``, so
    sizes and limits still select prefixes of one sequence.
    """
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for i in range(size):
        for attempt in range(MAX_REDRAWS):
            inst = make(seed, i, shots, attempt=attempt)
            key = query_block(inst["prompt"])
            if key not in seen:
                break
        else:  # pragma: no cover - only when size approaches the generator's query space
            raise IQError(f"{inst['subtask']}: cannot draw {size} distinct instances; use a smaller size")
        seen.add(key)
        out.append(inst)
    return out


def _check_int(value: Any, name: str, minimum: int) -> int:
    """Accept ints and integer strings (lm-eval metadata may arrive as strings)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    if number is None or number < minimum:
        raise IQError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def generate(
    subtask: str,
    seed: int = DEFAULT_SEED,
    size: int | None = None,
    shots: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Instances ``0 .. size-1`` of ``subtask`` (short or lm-eval name).

    ``size`` defaults to the spec's instance count (symbolic mapping: at most the number of
    labelled validation records); ``shots`` to the subtask's default (per label for symbolic
    mapping). Queries are unique within the list. Instance ``i`` depends on ``(subtask, seed, i,
    shots)``, the instances before it and, for symbolic mapping, the dataset content, never on
    ``size`` (prefix-stable).
    """
    spec = get_subtask(subtask)
    seed = _check_int(seed, "seed", 0)
    size = spec.default_size if size is None else _check_int(size, "size", 1)
    shots = spec.default_shots if shots is None else _check_int(shots, "shots", 0)
    if spec.category == "symbolic":
        return generate_symbolic(spec.name, seed, size, shots, data_dir)
    return unique_instances(GENERATORS[spec.name], seed, size, shots)
