"""Scores reported in the FLM-101B paper (arXiv 2309.03852), in percent, keyed by subtask name.

Copied from the spec (docs/iq-benchmark.md of the shared docs). GPT-3 has no CLUE-IQ scores.
"""

from __future__ import annotations

PAPER_MODELS = ("GPT-3 175B", "GLM-130B", "FLM-101B")

PAPER_SCORES: dict[str, dict[str, float]] = {
    "GPT-3 175B": {
        "boolq": 50.84,
        "wic": 53.33,
        "rte": 48.38,
        "wsc": 37.86,
        "counting": 82.43,
        "replace_lowercase": 80.67,
        "replace_word": 95.00,
        "head_tail": 61.00,
        "full_repeating": 92.00,
        "head_slicing": 57.00,
        "multi_key_retrieval": 92.67,
        "single_supporting_fact": 78.33,
        "two_supporting_facts": 39.33,
    },
    "GLM-130B": {
        "boolq": 40.13,
        "wic": 48.67,
        "rte": 47.65,
        "wsc": 56.31,
        "afqmc": 33.33,
        "csl": 53.85,
        "ocnli": 34.00,
        "cluewsc": 38.67,
        "counting": 60.81,
        "replace_lowercase": 69.67,
        "replace_word": 84.00,
        "head_tail": 38.00,
        "full_repeating": 70.00,
        "head_slicing": 51.00,
        "multi_key_retrieval": 77.67,
        "single_supporting_fact": 56.33,
        "two_supporting_facts": 26.67,
    },
    "FLM-101B": {
        "boolq": 49.50,
        "wic": 50.33,
        "rte": 48.38,
        "wsc": 38.83,
        "afqmc": 38.33,
        "csl": 55.29,
        "ocnli": 27.33,
        "cluewsc": 47.33,
        "counting": 69.59,
        "replace_lowercase": 64.00,
        "replace_word": 95.67,
        "head_tail": 52.00,
        "full_repeating": 79.00,
        "head_slicing": 63.00,
        "multi_key_retrieval": 89.00,
        "single_supporting_fact": 59.00,
        "two_supporting_facts": 32.33,
    },
}


def paper_score(model: str, subtask: str) -> float | None:
    """Percent score of ``model`` on ``subtask``, or ``None`` where the paper reports none."""
    return PAPER_SCORES[model].get(subtask)
