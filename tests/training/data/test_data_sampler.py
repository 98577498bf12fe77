"""Packing, held-out split, seeded order and exact resume under a different DP size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.training.data.data_helpers import make_documents, write_jsonl
from training.config.data import DataConfig, DatasetConfig
from training.data.build import build_sources
from training.data.ingest import CorpusSpec
from training.data.prepare import prepare_dataset
from training.data.sampler import PackedSequences, ShuffledSource
from training.data.shards import PreparedDataset
from training.data.splits import runs_of, split_runs, validation_mask
from training.errors import DataError

SEQ = 32


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("sampler")
    paths = []
    for name, count, seed in (("a", 120, 11), ("b", 8, 12)):
        corpus = write_jsonl(root / f"{name}.jsonl", make_documents(count, seed=seed))
        prepare_dataset(CorpusSpec(inputs=(str(corpus),)), tokenizer_dir, root / name, workers=1, shard_tokens=2_000)
        paths.append(root / name)
    return paths


def config(paths, seed=5, weights=(0.75, 0.25)):
    return DataConfig(
        kind="prepared",
        seed=seed,
        validation_fraction=0.1,
        datasets=[DatasetConfig(str(p), w) for p, w in zip(paths, weights)],
    )


def test_windows_tile_the_split_stream(two_datasets):
    ds = PreparedDataset(two_datasets[0])
    runs = split_runs(ds.doc_ends, ds.fingerprint, 0.1, "train", "a")
    stream = np.concatenate([ds.tokens(s, s + n) for s, n in zip(runs.starts, runs.lengths)]).astype(np.int64)
    packed = PackedSequences(ds, runs, SEQ)
    assert packed.num_samples == (len(stream) - 1) // SEQ
    for w in range(packed.num_samples):
        window = packed.window(w)
        assert window.dtype == np.int64 and window.shape == (SEQ + 1,)
        assert np.array_equal(window, stream[w * SEQ : w * SEQ + SEQ + 1])
    # document boundaries are marked with eos inside the packed windows
    assert (stream == ds.eos_id).sum() == int((~validation_mask(ds.num_documents, 0.1, ds.fingerprint)).sum())


def test_validation_documents_are_held_out(two_datasets):
    ds = PreparedDataset(two_datasets[0])
    mask = validation_mask(ds.num_documents, 0.1, ds.fingerprint)
    assert mask.sum() == 12
    assert np.array_equal(mask, validation_mask(ds.num_documents, 0.1, ds.fingerprint))
    train = split_runs(ds.doc_ends, ds.fingerprint, 0.1, "train", "a")
    valid = split_runs(ds.doc_ends, ds.fingerprint, 0.1, "validation", "a")
    assert train.total + valid.total == ds.num_tokens
    covered = np.zeros(ds.num_tokens, dtype=np.int8)
    for runs in (train, valid):
        for s, n in zip(runs.starts, runs.lengths):
            covered[s : s + n] += 1
    assert covered.min() == covered.max() == 1


def test_epoch_visits_every_window_once(two_datasets):
    ds = PreparedDataset(two_datasets[1])
    packed = PackedSequences(ds, split_runs(ds.doc_ends, ds.fingerprint, 0.1, "train", "b"), SEQ)
    source = ShuffledSource(packed, [1, 2])
    n = packed.num_samples
    first = [source.window_of(j) for j in range(n)]
    second = [source.window_of(j) for j in range(n, 2 * n)]
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second and first != list(range(n))


def global_batches(cfg, steps, batch, dp, start=0):
    """What the trainer sees: each DP rank reads its slice of the global indices of each step."""
    train, _ = build_sources(cfg, seq_length=SEQ, vocab_size=400)
    out = []
    for step in range(start, steps):
        indices = list(range(step * batch, (step + 1) * batch))
        per_rank = batch // dp
        ranks = [[train.sample(i) for i in indices[r * per_rank : (r + 1) * per_rank]] for r in range(dp)]
        out.append(np.stack([s for rank in ranks for s in rank]))
    return out


def test_same_seed_same_batches_different_seed_differs(two_datasets):
    a = global_batches(config(two_datasets, seed=5), 4, 8, 1)
    b = global_batches(config(two_datasets, seed=5), 4, 8, 1)
    c = global_batches(config(two_datasets, seed=6), 4, 8, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("dp_before, dp_after", [(1, 1), (1, 2), (2, 1), (2, 4)])
def test_resume_under_other_dp_size_is_exact(two_datasets, dp_before, dp_after):
    cfg = config(two_datasets)
    steps, batch, resume_at = 40, 8, 17
    train, _ = build_sources(cfg, seq_length=SEQ, vocab_size=400)
    b_reads = [local for source, local in map(train.locate, range(steps * batch)) if source == 1]
    assert max(b_reads) >= train.sources[1].num_samples  # dataset b wraps into its second epoch
    uninterrupted = global_batches(cfg, steps, batch, 1)
    before = global_batches(cfg, resume_at, batch, dp_before)
    after = global_batches(cfg, steps, batch, dp_after, start=resume_at)  # fresh sources, as after a restart
    assert len(before) + len(after) == steps
    for expected, got in zip(uninterrupted, before + after):
        assert np.array_equal(expected, got)


def test_train_and_validation_streams_differ(two_datasets):
    train, valid = build_sources(config(two_datasets), seq_length=SEQ, vocab_size=400)
    assert valid.seq_length == train.seq_length == SEQ
    assert not np.array_equal(train.sample(0), valid.sample(0))


def test_too_short_split_is_a_clear_error(two_datasets):
    cfg = config(two_datasets)
    cfg.validation_fraction = 0.01
    with pytest.raises(
        DataError,
        match=r"sampler0/[ab] \((train|validation) split\): has \d+ tokens, fewer than one sample of seq_length \+ 1 = 4097",
    ):
        build_sources(cfg, seq_length=4096, vocab_size=400)


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=30), data=st.data())
def test_runs_cover_exactly_the_selected_documents(lengths, data):
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(lengths), max_size=len(lengths))))
    ends = np.cumsum(lengths)
    runs = runs_of(ends, mask)
    expected = np.concatenate([[False] * 0] + [[m] * n for m, n in zip(mask, lengths)]).astype(bool)
    got = np.zeros(int(ends[-1]), dtype=bool)
    for s, n in zip(runs.starts, runs.lengths):
        assert not got[s : s + n].any()
        got[s : s + n] = True
    assert np.array_equal(got, expected)
    assert runs.total == int(np.dot(lengths, mask))
