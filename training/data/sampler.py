"""Fixed-length samples over one split of a prepared dataset, in a seeded order.

Packing: the split's token stream (its documents, each ending in eos, concatenated) is cut into
windows of ``seq_length + 1`` tokens starting every ``seq_length`` tokens -- window ``w`` is
tokens ``[w x L, w x L + L + 1)`` -- so consecutive windows share one token (the last label of
one is the first input of the next) and no token is dropped except the tail after the last full
window. Windows cross document boundaries; the eos tokens mark them.

Order: ``ShuffledSource.sample(j)`` is window ``perm_e[j mod W]`` with ``e = j div W`` and
``perm_e`` a permutation of the ``W`` windows drawn from ``numpy.random.default_rng(seed + [e])``.
Each epoch visits every window exactly once, and sample ``j`` is a pure function of ``(seed, j)``
(for a given NumPy bit generator), never of rank or reading history: resume is exact under any
data-parallel size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from training.data.shards import PreparedDataset
from training.data.splits import TokenRuns
from training.errors import DataError


class PackedSequences:
    """Windows of ``seq_length + 1`` tokens over the runs of one split (see the module docstring)."""

    def __init__(self, dataset: PreparedDataset, runs: TokenRuns, seq_length: int, name: str = ""):
        if seq_length <= 0:
            raise ValueError("seq_length must be > 0")
        self.dataset = dataset
        self.runs = runs
        self.seq_length = seq_length
        self.num_samples = max(0, (runs.total - 1) // seq_length)
        if self.num_samples == 0:
            raise DataError(
                f"{name or dataset.path}: has {runs.total} tokens, fewer than one sample of seq_length + 1 = "
                f"{seq_length + 1}; use more data (or, for the validation split, a larger data.validation_fraction)"
            )

    def window(self, index: int) -> np.ndarray:
        """int64[seq_length + 1]: window ``index`` (0 <= index < num_samples)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"window {index} outside [0, {self.num_samples})")
        runs = self.runs
        begin = index * self.seq_length
        need = self.seq_length + 1
        run = int(np.searchsorted(runs.offsets, begin, side="right")) - 1
        offset = begin - int(runs.offsets[run])
        start = int(runs.starts[run]) + offset
        if offset + need <= int(runs.lengths[run]):
            return self.dataset.tokens(start, start + need).astype(np.int64)
        pieces = []
        while need:
            take = min(need, int(runs.lengths[run]) - offset)
            pieces.append(self.dataset.tokens(start, start + take))
            need -= take
            run += 1
            offset = 0
            if need:
                start = int(runs.starts[run])
        return np.concatenate(pieces).astype(np.int64)


class ShuffledSource:
    """``SampleSource`` over a ``PackedSequences``: epoch-wise seeded permutations of the windows."""

    #: permutations kept in memory (reading crosses at most one epoch boundary at a time)
    CACHED_EPOCHS = 2

    def __init__(self, packed: PackedSequences, seed: Sequence[int]):
        self.packed = packed
        self.seq_length = packed.seq_length
        self.seed = [int(s) for s in seed]
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_perms"}  # rebuilt on demand

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._perms = OrderedDict()

    @property
    def num_samples(self) -> int:
        """Samples per epoch."""
        return self.packed.num_samples

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng(self.seed + [epoch]).permutation(self.packed.num_samples)
            self._perms[epoch] = perm
            while len(self._perms) > self.CACHED_EPOCHS:
                self._perms.popitem(last=False)
        return perm

    def window_of(self, index: int) -> int:
        """The window that sample ``index`` reads."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        epoch, position = divmod(index, self.packed.num_samples)
        return int(self._perm(epoch)[position])

    def sample(self, index: int) -> np.ndarray:
        return self.packed.window(self.window_of(index))
