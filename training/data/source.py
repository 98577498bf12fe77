"""What the trainer reads: a source of fixed-length token samples addressed by a global index.

Contract (``SampleSource``): ``sample(i)`` returns the ``i``-th sample of the *global* sample stream
as an int64 array of ``seq_length + 1`` token ids (inputs are ``[:-1]``, labels ``[1:]``). The
stream depends only on the source's seed and ``i``, never on the process's rank or on how many
samples were read before; this is what makes resume (also under a different DP size) exact.
A source of tokenized documents may say its end-of-document id as ``eos_id`` (``data.reset_at_eos``
needs it).

``PositionedSource``: a training source whose stream also depends on a ``DataPosition`` (the blend
of prepared datasets, ``training.data.blend``); trainers record its ``position`` in checkpoints and
``enter`` the recorded one when they resume or continue a grown checkpoint.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import numpy as np

from training.data.position import DataPosition


class SampleSource(Protocol):
    seq_length: int

    def sample(self, index: int) -> np.ndarray:  # int64[seq_length + 1]
        ...


@runtime_checkable
class PositionedSource(Protocol):
    seq_length: int
    position: DataPosition

    def sample(self, index: int) -> np.ndarray: ...

    def enter(self, saved: Optional[DataPosition], consumed: int) -> DataPosition: ...


class MockSource:
    """Seeded random tokens: sample ``i`` is drawn from a generator seeded by ``(seed, i)``.

    Tokens follow a fixed Zipf-like unigram distribution and each sample repeats its first
    quarter, so a model has something to learn (unigram statistics, then copying) and a loss that
    decreases is a meaningful signal in tests. Used for tests and for runs without a corpus. It has
    no documents (``eos_id`` is None).
    """

    eos_id = None

    def __init__(self, vocab_size: int, seq_length: int, seed: int):
        self.vocab_size = vocab_size
        self.seq_length = seq_length
        self.seed = seed

    def sample(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        n = self.seq_length + 1
        ranks = np.arange(1, self.vocab_size + 1, dtype=np.float64)
        probs = 1.0 / ranks
        probs /= probs.sum()
        period = max(1, n // 4)
        head = rng.choice(self.vocab_size, size=period, p=probs).astype(np.int64)
        return np.resize(head, n)
