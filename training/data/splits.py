"""Held-out validation split of a prepared dataset, at document granularity.

``validation_mask`` picks ``max(1, round(fraction x documents))`` documents for validation with a
generator seeded from the dataset's fingerprint: the held-out set depends only on the dataset's
contents and the fraction -- not on the run's seed, the blend or the sequence length -- so runs
that differ in those still evaluate on the same documents, and no document is in both splits.

A split is described by ``TokenRuns``: the maximal ranges of consecutive documents that belong
to it, as (start, length) in the dataset's token stream, plus their cumulative offsets in the
split's own stream (the concatenation of its runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from training.errors import DataError

Split = Literal["train", "validation"]


def validation_mask(num_documents: int, fraction: float, fingerprint: str) -> np.ndarray:
    """bool[num_documents]: True for the documents held out for validation."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    mask = np.zeros(num_documents, dtype=bool)
    if fraction == 0.0 or num_documents == 0:
        return mask
    count = max(1, int(round(fraction * num_documents)))
    rng = np.random.default_rng(int(fingerprint[:16], 16))
    mask[rng.choice(num_documents, size=count, replace=False)] = True
    return mask


@dataclass(frozen=True)
class TokenRuns:
    #: int64[k] start of each run in the dataset's token stream
    starts: np.ndarray
    #: int64[k] length of each run in tokens
    lengths: np.ndarray
    #: int64[k + 1] offset of each run in the split's stream; offsets[-1] == total
    offsets: np.ndarray

    @property
    def total(self) -> int:
        return int(self.offsets[-1])


def runs_of(doc_ends: np.ndarray, mask: np.ndarray) -> TokenRuns:
    """The token runs of the documents selected by ``mask`` (bool[len(doc_ends)])."""
    doc_ends = np.asarray(doc_ends, dtype=np.int64)
    doc_starts = np.concatenate([[0], doc_ends[:-1]]).astype(np.int64)
    padded = np.concatenate([[False], mask, [False]])
    change = np.flatnonzero(padded[1:] != padded[:-1])
    first, after_last = change[0::2], change[1::2]  # run = documents [first, after_last)
    starts = doc_starts[first]
    lengths = doc_ends[after_last - 1] - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenRuns(starts.astype(np.int64), lengths.astype(np.int64), offsets)


def split_runs(doc_ends: np.ndarray, fingerprint: str, fraction: float, split: Split, where: str) -> TokenRuns:
    """Token runs of ``split``; DataError (naming ``where``) if the dataset is too small to split."""
    num_documents = len(doc_ends)
    if fraction > 0.0 and num_documents < 2:
        raise DataError(
            f"{where}: has {num_documents} document(s); a validation split needs at least 2 "
            "(prepare more documents, e.g. text_unit=paragraph for plain text)"
        )
    mask = validation_mask(num_documents, fraction, fingerprint)
    return runs_of(doc_ends, mask if split == "validation" else ~mask)
