"""Mixing several sample sources by weight, as a pure function of (seed, global index).

The global sample stream is cut into chunks of ``chunk`` samples. Every chunk contains exactly
``counts[d]`` samples of source ``d`` -- the largest-remainder rounding of ``chunk x w_d`` with
the weights normalised to sum to 1 -- at positions given by a permutation drawn from
``default_rng(seed + [chunk index])``. The ``k``-th sample of source ``d`` inside chunk ``c`` is
that source's sample ``c x counts[d] + k``. Hence:

* the share of source ``d`` is ``counts[d] / chunk``, within ``1 / chunk`` of ``w_d``, exactly at
  every chunk boundary and up to one chunk's deviation in between;
* each source is read in its own order without gaps or repeats (its own epochs then apply);
* sample ``g`` needs only chunk ``g div chunk``: random access, exact resume under any DP size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.data.source import SampleSource
from training.errors import DataError

DEFAULT_CHUNK = 1 << 14


def chunk_counts(weights: Sequence[float], chunk: int) -> np.ndarray:
    """int64[len(weights)]: samples of each source per chunk (largest remainder, ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * chunk
    counts = np.floor(exact).astype(np.int64)
    left = chunk - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:left]] += 1
    return counts


class BlendedSource:
    """``SampleSource`` drawing from ``sources`` in proportion to ``weights`` (see the module docstring)."""

    def __init__(
        self,
        sources: Sequence[SampleSource],
        weights: Sequence[float],
        seed: Sequence[int],
        chunk: int = DEFAULT_CHUNK,
        names: Sequence[str] | None = None,
    ):
        if not sources:
            raise DataError("a blend needs at least one dataset")
        if len(weights) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
        names = list(names or [f"dataset {i}" for i in range(len(sources))])
        for name, weight in zip(names, weights):
            if not weight > 0 or not np.isfinite(weight):
                raise DataError(f"{name}: blend weight must be a positive number, got {weight}")
        lengths = {s.seq_length for s in sources}
        if len(lengths) != 1:
            raise ValueError(f"sources have different seq_length values: {sorted(lengths)}")
        self.sources = list(sources)
        self.seq_length = sources[0].seq_length
        self.weights = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        self.chunk = chunk
        self.counts = chunk_counts(weights, chunk)
        for name, count, weight in zip(names, self.counts, self.weights):
            if count == 0:
                raise DataError(
                    f"{name}: blend weight share {weight:.2e} is below the blend resolution 1/{chunk}; "
                    "raise its weight or drop the dataset"
                )
        self.seed = [int(s) for s in seed]
        self._labels = np.repeat(np.arange(len(sources), dtype=np.int64), self.counts)
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        # caches are rebuilt on demand; pickling them would only make worker start-up slower
        return {k: v for k, v in self.__dict__.items() if k not in ("_labels", "_cached")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._labels = np.repeat(np.arange(len(self.sources), dtype=np.int64), self.counts)
        self._cached = None

    def _chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each position, rank of the position among its source's positions) of a chunk."""
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1], self._cached[2]
        labels = self._labels[np.random.default_rng(self.seed + [index]).permutation(self.chunk)]
        order = np.argsort(labels, kind="stable")
        first = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        ranks = np.empty(self.chunk, dtype=np.int64)
        ranks[order] = np.arange(self.chunk, dtype=np.int64) - first[labels[order]]
        self._cached = (index, labels, ranks)
        return labels, ranks

    def locate(self, index: int) -> tuple[int, int]:
        """(source, index within that source) of global sample ``index``."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        chunk, position = divmod(index, self.chunk)
        labels, ranks = self._chunk(chunk)
        source = int(labels[position])
        return source, chunk * int(self.counts[source]) + int(ranks[position])

    def sample(self, index: int) -> np.ndarray:
        source, local = self.locate(index)
        return self.sources[source].sample(local)
