"""The instance record shared by all generators, its seeding and its canonical serialisation.

An instance is a plain dict with exactly these keys (the lm-eval task YAMLs read them):

``subtask`` (str), ``seed`` (int), ``index`` (int),
``prompt`` (str: the full model input, demonstrations included, ending where the answer starts),
``choices`` (list[str]: answer options of a multiple-choice subtask, ``[]`` for generation),
``gold`` (int: index of the right choice, ``-1`` for generation),
``answer`` (str: the gold answer text; ``choices[gold]`` for multiple choice),
``meta`` (str: JSON with generator details, for debugging only; never needed for scoring).

Determinism: every random choice for instance ``index`` comes from :func:`rng_for`, a
``random.Random`` seeded with a string built from ``(subtask, seed, index, purpose)``. Python
seeds string seeds through SHA-512, independent of ``PYTHONHASHSEED``, platform and process, so
the same arguments give the same instance everywhere, and instance ``i`` does not depend on how
many instances are generated.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

INSTANCE_KEYS = ("subtask", "seed", "index", "prompt", "choices", "gold", "answer", "meta")


def rng_for(subtask: str, seed: int, index: int | str, purpose: str = "instance") -> random.Random:
    """A private random generator for one ``(subtask, seed, index, purpose)``."""
    return random.Random(f"flm_iq|{subtask}|{int(seed)}|{index}|{purpose}")


def instance_rng(subtask: str, seed: int, index: int, attempt: int = 0) -> random.Random:
    """The generator of draw ``attempt`` of instance ``index`` (attempt 0 is the first draw;
    :func:`eval_iq.generate.generate` redraws an instance whose query repeats an earlier one)."""
    return rng_for(subtask, seed, index, "instance" if attempt == 0 else f"instance-redraw-{attempt}")


def query_block(prompt: str) -> str:
    """The query part of a prompt: its last blank-line separated block (what makes an instance)."""
    return prompt.rsplit("\n\n", 1)[-1]


def make_instance(
    subtask: str,
    seed: int,
    index: int,
    prompt: str,
    answer: str,
    *,
    choices: Sequence[str] | None = None,
    gold: int = -1,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build an instance dict, checking the multiple-choice invariants."""
    choices = list(choices or [])
    if choices:
        if not 0 <= gold < len(choices) or choices[gold] != answer:
            raise ValueError(f"{subtask}[{index}]: gold {gold} does not point at answer {answer!r}")
    elif gold != -1:
        raise ValueError(f"{subtask}[{index}]: generation instances use gold=-1")
    return {
        "subtask": subtask,
        "seed": int(seed),
        "index": int(index),
        "prompt": prompt,
        "choices": choices,
        "gold": int(gold),
        "answer": answer,
        "meta": json.dumps(meta or {}, ensure_ascii=False, sort_keys=True),
    }


def to_jsonl(instances: Iterable[dict[str, Any]]) -> bytes:
    """Canonical JSONL bytes (sorted keys, UTF-8, ``\\n`` line ends): byte-identical per seed."""
    lines = [json.dumps(inst, ensure_ascii=False, sort_keys=True) for inst in instances]
    return ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8")


def sha256_of(instances: Iterable[dict[str, Any]]) -> str:
    """SHA-256 of :func:`to_jsonl`; recorded in results to identify the exact instances used."""
    return hashlib.sha256(to_jsonl(instances)).hexdigest()


def write_jsonl(instances: Iterable[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_jsonl(instances))
    return path


def join_blocks(blocks: Iterable[str]) -> str:
    """Demonstrations and the query are separated by one blank line."""
    return "\n\n".join(blocks)
