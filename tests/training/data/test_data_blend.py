"""Blending: weights honoured, each source read in order without gaps, random access."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.blend import BlendedSource, chunk_counts
from training.errors import DataError


class Counter:
    """A source whose sample i is [source id, i, ...]."""

    def __init__(self, ident: int, seq_length: int = 3):
        self.ident = ident
        self.seq_length = seq_length

    def sample(self, index: int) -> np.ndarray:
        return np.array([self.ident, index, 0, 0], dtype=np.int64)


def test_chunk_counts_sum_and_round():
    counts = chunk_counts([0.5, 0.3, 0.2], 1000)
    assert counts.tolist() == [500, 300, 200]
    odd = chunk_counts([1, 1, 1], 100)
    assert odd.sum() == 100 and odd.max() - odd.min() <= 1


def test_weights_honoured_over_many_samples():
    weights = [0.5, 0.3, 0.2]
    blend = BlendedSource([Counter(i) for i in range(3)], weights, seed=[9], chunk=4096)
    labels = np.array([blend.locate(g)[0] for g in range(60_000)])
    shares = np.bincount(labels, minlength=3) / labels.size
    assert np.allclose(shares, weights, atol=0.005), shares
    # also inside windows that start mid-chunk
    window = labels[10_000:15_000]
    assert np.allclose(np.bincount(window, minlength=3) / window.size, weights, atol=0.03)


def test_each_source_is_read_in_order_without_gaps():
    blend = BlendedSource([Counter(i) for i in range(3)], [5, 3, 2], seed=[1], chunk=512)
    seen = {0: [], 1: [], 2: []}
    for g in range(5_000):
        sample = blend.sample(g)
        seen[int(sample[0])].append(int(sample[1]))
    for local in seen.values():
        assert local == list(range(len(local)))


def test_pure_function_of_seed_and_index():
    make = lambda seed: BlendedSource([Counter(0), Counter(1)], [0.6, 0.4], seed=[seed], chunk=256)
    forward = [make(3).locate(g) for g in range(1_000)]
    fresh = make(3)
    backward = [fresh.locate(g) for g in reversed(range(1_000))][::-1]
    assert forward == backward
    assert forward != [make(4).locate(g) for g in range(1_000)]


def test_single_source_is_identity():
    blend = BlendedSource([Counter(0)], [1.0], seed=[2], chunk=64)
    assert [blend.locate(g) for g in range(200)] == [(0, g) for g in range(200)]


def test_bad_weights():
    with pytest.raises(DataError, match="d1: blend weight must be a positive"):
        BlendedSource([Counter(0), Counter(1)], [1.0, 0.0], seed=[0], names=["d0", "d1"])
    with pytest.raises(DataError, match="d1: blend weight share .* below the blend resolution"):
        BlendedSource([Counter(0), Counter(1)], [1.0, 1e-9], seed=[0], names=["d0", "d1"])
    with pytest.raises(ValueError, match="seq_length"):
        BlendedSource([Counter(0, 3), Counter(1, 4)], [1.0, 1.0], seed=[0])
