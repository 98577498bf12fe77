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

The training blend of a run is read from a ``DataPosition`` (``training.data.position``): from its
``origin`` on, the blend's sample ``g - origin`` of dataset ``d`` is that dataset's sample
``cursors[d] + k``. A run that never changes its blend has origin 0 and no cursors (the stream above);
a stage that changes the blend enters a new position (``enter``), which trainers record in their
checkpoints (``position``) and restore on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.data.position import DataPosition, spec_of
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
        keys: Sequence[str] | None = None,
        tokenizer: str | None = None,
        eos_id: int | None = None,
    ):
        """``names``: how errors name the sources; ``keys``: their identities in a ``DataPosition``
        (the datasets' fingerprints; default: the names); ``tokenizer``: the SHA-256 of the sources'
        tokenizer; ``eos_id``: its end-of-document id (``data.reset_at_eos`` reads it)."""
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
        self.keys = list(keys or names)
        if len(set(self.keys)) != len(self.keys):
            twice = sorted({k for k in self.keys if self.keys.count(k) > 1})
            raise DataError(
                f"the blend lists the same dataset twice ({', '.join(twice)}); list it once with the summed weight"
            )
        self.spec = spec_of(self.keys, self.counts, chunk, self.seed)
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        #: where the blend's order begins and each source's first sample (see the module docstring)
        self.position = DataPosition(self.spec, tokenizer=tokenizer)
        self._offsets = [0] * len(self.sources)
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        # the cache is rebuilt on demand; pickling it would only make worker start-up slower
        return {k: v for k, v in self.__dict__.items() if k != "_cached"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cached = None

    def enter(self, saved: DataPosition | None, consumed: int) -> DataPosition:
        """Read from ``consumed`` on, continuing ``saved`` (a checkpoint's position; None: a run that
        recorded none, read from origin 0 as always): ``DataPosition.entered``. Returns the position."""
        position = DataPosition(self.spec, tokenizer=self.tokenizer) if saved is None else saved
        self.position = position.entered(self.spec, consumed, self.tokenizer)
        self._offsets = [self.position.cursor(k) for k in self.keys]
        return self.position

    def _chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(source of each position, rank of the position among its source's positions) of a chunk."""
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1], self._cached[2]
        labels = self.spec.labels(index)
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
        """Global sample ``index`` (>= the position's origin) of the run's stream."""
        origin = self.position.origin
        if index < origin:
            raise IndexError(f"sample {index} precedes the blend's origin {origin}: this blend is read from there on")
        source, local = self.locate(index - origin)
        return self.sources[source].sample(self._offsets[source] + local)
