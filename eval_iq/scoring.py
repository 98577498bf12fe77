"""Exact-match scoring of generation subtasks.

Normalisation (both prediction and gold): strip surrounding whitespace, collapse every run of
whitespace to one space, then drop one trailing period. Nothing else (case, commas and inner
punctuation are significant): the prompts state the exact output format.
"""

from __future__ import annotations

import re
from typing import Any

_WS = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    text = _WS.sub(" ", text.strip())
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def process_generation(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval ``process_results`` hook: ``{"acc": 1.0 | 0.0}`` for the first generation."""
    prediction = results[0] if results else ""
    return {"acc": 1.0 if exact_match(prediction, doc["answer"]) else 0.0}
