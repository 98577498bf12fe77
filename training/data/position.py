"""Where a run stands in its training data when the blend can change between stages: ``DataPosition``.

A blend (``training.data.blend``) reads each of its datasets in that dataset's own order (its seeded
epochs, ``training.data.sampler``), without gaps; which dataset a sample comes from is decided
chunk by chunk (``BlendSpec``). A stage of a staged run may blend other datasets or other weights.
The position is then *per dataset*, the way the blend itself already counts:

* ``origin`` -- the global sample index (``consumed_samples``, counted over the whole run) where
  the current blend's order begins: its chunk 0 starts there;
* ``cursors`` -- for every dataset read before ``origin`` (keyed by its fingerprint), how many of
  its training samples were read before ``origin``;
* ``blend`` -- the ``BlendSpec`` read from ``origin`` on.

Global sample ``g >= origin`` is the current blend's local sample ``l = g - origin``: the blend
puts it in dataset ``d`` as that dataset's ``k``-th sample of the blend, and it reads that
dataset's sample ``cursors[d] + k``. A dataset that stays in the blend goes on where it stopped
(nothing repeated, nothing skipped), one that joins starts at its first sample, one that leaves
keeps its cursor for a later stage that takes it back.

``entered(spec, consumed)``: a trainer starting at ``consumed`` with blend ``spec`` from a
checkpoint whose position is ``self``. The same blend keeps the position unchanged (the stream of
a run whose blend never changes is the one blend read from sample 0, exactly as without stages);
another blend starts at ``origin = consumed`` with every dataset's cursor advanced by what the
old blend read of it in ``[origin, consumed)``. All of it is a pure function of the recorded
position and ``consumed``, so it is the same on every rank, under any DP size, and on resume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from training.errors import DataError


@dataclass(frozen=True)
class BlendSpec:
    """A blend's order, as data: its datasets (``keys``, in blend order), how many samples of each a
    chunk of ``chunk`` samples holds (``counts``), and the seed of the chunks' permutations."""

    keys: tuple[str, ...]
    counts: tuple[int, ...]
    chunk: int
    seed: tuple[int, ...]

    def labels(self, index: int) -> np.ndarray:
        """int64[chunk]: the dataset (position in ``keys``) of each sample of chunk ``index``."""
        base = np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts)
        return base[np.random.default_rng([*self.seed, index]).permutation(self.chunk)]

    def taken(self, n: int) -> dict[str, int]:
        """Samples of each dataset among the blend's first ``n`` samples."""
        full, rest = divmod(n, self.chunk)
        counts = np.asarray(self.counts, dtype=np.int64) * full
        if rest:
            counts += np.bincount(self.labels(full)[:rest], minlength=len(self.counts))
        return {k: int(c) for k, c in zip(self.keys, counts)}

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "counts": list(self.counts), "chunk": self.chunk, "seed": list(self.seed)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlendSpec:
        return cls(
            tuple(str(k) for k in data["keys"]),
            tuple(int(c) for c in data["counts"]),
            int(data["chunk"]),
            tuple(int(s) for s in data["seed"]),
        )


@dataclass(frozen=True)
class DataPosition:
    """See the module docstring. ``tokenizer``: the SHA-256 of the datasets' tokenizer (a blend
    change may not change it: the model's ids would mean other tokens)."""

    blend: BlendSpec
    origin: int = 0
    cursors: Mapping[str, int] = field(default_factory=dict)
    tokenizer: Optional[str] = None

    def cursor(self, key: str) -> int:
        return int(self.cursors.get(key, 0))

    def cursors_at(self, consumed: int) -> dict[str, int]:
        """Every dataset's cursor once the run has consumed ``consumed`` samples (>= ``origin``)."""
        if consumed < self.origin:
            raise ValueError(f"consumed samples {consumed} precede the blend's origin {self.origin}")
        out = {k: int(v) for k, v in self.cursors.items()}
        for key, n in self.blend.taken(consumed - self.origin).items():
            out[key] = out.get(key, 0) + n
        return out

    def entered(self, blend: BlendSpec, consumed: int, tokenizer: Optional[str] = None) -> DataPosition:
        """The position of a trainer reading ``blend`` from ``consumed`` on (see the module docstring)."""
        if tokenizer is not None and self.tokenizer is not None and tokenizer != self.tokenizer:
            raise DataError(
                f"the run's data so far was tokenized with tokenizer {self.tokenizer[:12]}, this stage's datasets "
                f"with {tokenizer[:12]}; every stage of a run must use the same tokenizer (prepare the datasets with it)"
            )
        if blend == self.blend:
            return self
        return DataPosition(blend, consumed, self.cursors_at(consumed), tokenizer or self.tokenizer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "cursors": dict(self.cursors),
            "blend": self.blend.to_dict(),
            "tokenizer": self.tokenizer,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataPosition:
        return cls(
            BlendSpec.from_dict(data["blend"]),
            int(data["origin"]),
            {str(k): int(v) for k, v in data["cursors"].items()},
            data.get("tokenizer"),
        )


def spec_of(keys: Sequence[str], counts: Sequence[int], chunk: int, seed: Sequence[int]) -> BlendSpec:
    """A ``BlendSpec`` from any sequences (tuples inside, so specs compare and hash by value)."""
    return BlendSpec(tuple(keys), tuple(int(c) for c in counts), int(chunk), tuple(int(s) for s in seed))
