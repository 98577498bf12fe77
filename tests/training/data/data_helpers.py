"""Synthetic corpora for the data pipeline tests (deterministic; tests never download data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: characters outside ASCII, so byte fallback and multi-byte UTF-8 are exercised
_EXTRA = ["é", "ß", "中文", "ü", "→", "😀", "\t", "  "]


def make_documents(count: int, seed: int = 0, words: int = 300) -> list[str]:
    """Deterministic pseudo-text: words from a fixed random lexicon, lines, indentation, unicode."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(words)]
    probs = 1.0 / np.arange(1, words + 1)
    probs /= probs.sum()
    docs = []
    for _ in range(count):
        lines = []
        for _ in range(int(rng.integers(1, 8))):
            chosen = rng.choice(words, size=int(rng.integers(3, 25)), p=probs)
            line = " ".join(lexicon[i] for i in chosen)
            if rng.random() < 0.3:
                line = "    " + line + " " + _EXTRA[int(rng.integers(len(_EXTRA)))]
            lines.append(line + rng.choice([".", ",", ":", "", "!"]))
        docs.append("\n".join(lines))
    return docs


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({field: doc, "id": i}, ensure_ascii=False) + "\n")
    return path
