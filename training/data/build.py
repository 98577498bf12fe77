"""What the trainer calls: ``build_sources`` turns a ``DataConfig`` into (train, validation) sources.

* ``kind: mock`` -- ``MockSource(vocab_size, seq_length, seed)`` and the same with ``seed + 1``.
* ``kind: prepared`` -- each dataset is split into train/validation documents
  (``splits``), packed into ``seq_length + 1`` windows and shuffled per epoch (``sampler``), and
  the datasets are blended by weight (``blend``). Both sources are pure functions of
  ``(data.seed, global index)``; the training source also of its ``DataPosition`` (a stage that
  changes the blend, ``training.data.position``). Each dataset is known by its fingerprint there.
* ``kind: default`` -- ``prepare_default_data(default_data_dir(data), vocab_size)`` (cached,
  idempotent; the pinned selection's archives fetched into ``data.sources_dir`` when absent), then
  as ``prepared`` with that one dataset.

The tokenizer's vocabulary must equal ``model.vocab_size`` (the model pads its embedding rows for
tensor parallelism on its own; a Hugging Face tokenizer may have fewer ids than the model has
rows); a mismatch, datasets tokenized by different tokenizers, or a
``data.tokenizer`` that is not the one the datasets were made with are ``DataError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from training.config import RunConfig
from training.config.data import DataConfig, DatasetConfig
from training.data.blend import BlendedSource
from training.data.default_corpus import write_default_corpus
from training.data.ingest import CorpusSpec
from training.data.pinned_corpus import DEFAULT_SOURCES_DIR
from training.data.prepare import prepare_dataset
from training.data.sampler import PackedSequences, ShuffledSource
from training.data.sentencepiece_tokenizer import TokenizerSpec, model_path, train_tokenizer
from training.data.shards import PreparedDataset
from training.data.source import MockSource, SampleSource
from training.data.splits import split_runs
from training.data.tokenizer import load_tokenizer
from training.errors import DataError

logger = logging.getLogger(__name__)

#: stream ids mixed into the seeds: train and validation draw from independent streams
TRAIN, VALIDATION = 0, 1


@dataclass
class PreparedDataInfo:
    """Where ``prepare_default_data`` put things; ``data_config`` turns it into a run's data section."""

    corpus_dir: Path
    tokenizer_dir: Path
    dataset_dir: Path
    #: the prepared dataset's fingerprint (corpus contents + tokenizer)
    fingerprint: str
    tokenizer_sha256: str
    vocab_size: int
    #: False when everything was already up to date (nothing was done)
    prepared: bool
    #: the sample-order seed ``data_config`` uses
    seed: int = 1234

    def data_config(self, validation_fraction: float = 0.01) -> DataConfig:
        """A ``kind: prepared`` data section reading this dataset with this tokenizer."""
        return DataConfig(
            kind="prepared",
            seed=self.seed,
            datasets=[DatasetConfig(path=str(self.dataset_dir), weight=1.0)],
            tokenizer=str(self.tokenizer_dir),
            validation_fraction=validation_fraction,
        )


def prepare_default_data(
    out_dir: str | Path,
    vocab_size: int,
    seed: int = 1234,
    *,
    workers: int = 2,
    model_type: str = "bpe",
    selection: str = "small",
    sources_dir: str | Path = DEFAULT_SOURCES_DIR,
) -> PreparedDataInfo:
    """Build the embedded default corpus, its tokenizer and its shards under ``out_dir``.

    Layout: ``corpus/`` (default_corpus), ``tokenizer-<model_type>-v<vocab_size>/``,
    ``prepared-<model_type>-v<vocab_size>/``. Idempotent: a second call with the same arguments
    on the same Python version does nothing and returns the same paths. ``seed`` only becomes the
    order seed of ``data_config()``; the tokenizer is trained on the whole corpus, so it needs none.
    ``selection`` picks the default corpus's small, large or pinned selection (the pinned one's
    archives cached in ``sources_dir``).
    """
    out_dir = Path(out_dir).expanduser()
    corpus = write_default_corpus(out_dir / "corpus", selection=selection, sources_dir=sources_dir)
    spec = CorpusSpec(inputs=(str(corpus.corpus_file),))
    name = f"{model_type}-v{vocab_size}"
    # force=True: this directory is a cache derived from the corpus; a new Python version changes
    # the corpus, and the stale tokenizer and shards must then be replaced, not kept.
    tok = train_tokenizer(
        spec, out_dir / f"tokenizer-{name}", TokenizerSpec(vocab_size=vocab_size, model_type=model_type), force=True
    )  # type: ignore[arg-type]
    data = prepare_dataset(spec, tok.tokenizer, out_dir / f"prepared-{name}", workers=workers, force=True)
    return PreparedDataInfo(
        out_dir / "corpus",
        out_dir / f"tokenizer-{name}",
        data.out_dir,
        data.manifest["fingerprint"],
        tok.tokenizer.sha256,
        tok.tokenizer.vocab_size,
        corpus.written or tok.trained or data.prepared,
        seed,
    )


def default_data_dir(cfg: DataConfig) -> Path:
    """Where ``kind: default`` data is cached: ``default_dir``, the large and pinned corpora in its
    ``large/`` and ``pinned/``."""
    root = Path(cfg.default_dir).expanduser()
    return root if cfg.default_corpus == "small" else root / cfg.default_corpus


def prepare_configured_default_data(cfg: DataConfig, vocab_size: int):
    """``prepare_default_data`` for a ``kind: default`` data section (its corpus, cache, seed, workers
    and pinned sources); cached and idempotent."""
    return prepare_default_data(
        default_data_dir(cfg),
        vocab_size,
        cfg.seed,
        workers=cfg.workers,
        selection=cfg.default_corpus,
        sources_dir=cfg.sources_dir,
    )


def _entries(cfg: DataConfig, vocab_size: int) -> tuple[list[DatasetConfig], str | None]:
    if cfg.kind == "default":
        info = prepare_configured_default_data(cfg, vocab_size)
        return [DatasetConfig(path=str(info.dataset_dir), weight=1.0)], str(info.tokenizer_dir)
    return list(cfg.datasets), cfg.tokenizer


def _open_datasets(entries: list[DatasetConfig], tokenizer: str | None) -> tuple[list[PreparedDataset], str, int, str]:
    """The datasets plus (tokenizer description, vocab size, tokenizer kind), checking they share one
    tokenizer."""
    datasets = [PreparedDataset(Path(e.path).expanduser()) for e in entries]
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.tokenizer_sha256 != first.tokenizer_sha256:
            raise DataError(
                f"{ds.path} was tokenized with tokenizer {ds.tokenizer_sha256[:12]} but {first.path} with "
                f"{first.tokenizer_sha256[:12]}; prepare all datasets of a blend with the same tokenizer"
            )
    if tokenizer is not None:
        tok = load_tokenizer(Path(tokenizer).expanduser())
        if tok.sha256 != first.tokenizer_sha256:
            raise DataError(
                f"data.tokenizer {model_path(Path(tokenizer).expanduser())} (sha256 {tok.sha256[:12]}) is not the "
                f"tokenizer {first.path} was prepared with ({first.tokenizer_sha256[:12]}); point data.tokenizer at "
                "that tokenizer, set it to null, or prepare the data again with this one"
            )
        return datasets, str(tok.path), tok.vocab_size, tok.kind
    kind = first.manifest["tokenizer"].get("kind", "sentencepiece")
    return datasets, f"{first.tokenizer_path()} (copy inside {first.path})", first.vocab_size, kind


def _dataset_seed(seed: int, ds: PreparedDataset, stream: int) -> list[int]:
    # keyed by the dataset's fingerprint, not its position, so reordering the list keeps each order
    return [seed, int(ds.fingerprint[:8], 16), stream]


def tokenizer_vocab_size(cfg: DataConfig) -> int | None:
    """The tokenizer's real vocabulary size, or None when it follows the model (kind mock/default).

    For ``kind: default`` the tokenizer is trained to exactly ``model.vocab_size``.
    """
    if cfg.kind != "prepared":
        return None
    _, _, vocab, _ = _open_datasets(list(cfg.datasets), cfg.tokenizer)
    return vocab


def check_vocab_size(cfg: DataConfig, vocab_size: int) -> None:
    """DataError unless ``vocab_size`` (model.vocab_size) fits the tokenizer (see :func:`_check_vocab`)."""
    if cfg.kind != "prepared":
        return
    _, where, vocab, kind = _open_datasets(list(cfg.datasets), cfg.tokenizer)
    _check_vocab(where, vocab, vocab_size, kind)


def _check_vocab(where: str, vocab: int, vocab_size: int, kind: str = "sentencepiece") -> None:
    """model.vocab_size must equal the tokenizer's vocabulary; a Hugging Face tokenizer may have fewer
    ids than the model has rows (released models pad their embeddings, e.g. Qwen2: 151665 ids,
    151936 rows; the extra rows are never a target)."""
    if kind == "hf" and vocab < vocab_size:
        logger.info(
            "model.vocab_size %d is larger than the %d ids of the tokenizer %s (the model's own padding)",
            vocab_size,
            vocab,
            where,
        )
        return
    if vocab != vocab_size:
        raise DataError(
            f"model.vocab_size is {vocab_size} but the tokenizer {where} has {vocab} ids; set model.vocab_size: "
            f"{vocab} (embedding rows are padded for tensor parallelism separately, via "
            "model.make_vocab_size_divisible_by)"
        )


def build_sources(cfg: DataConfig, *, seq_length: int, vocab_size: int) -> tuple[SampleSource, SampleSource]:
    """(train, validation) sample sources for a run; see the module docstring."""
    if cfg.kind == "mock":
        return MockSource(vocab_size, seq_length, cfg.seed), MockSource(vocab_size, seq_length, cfg.seed + 1)
    entries, tokenizer = _entries(cfg, vocab_size)
    datasets, where, vocab, kind = _open_datasets(entries, tokenizer)
    _check_vocab(where, vocab, vocab_size, kind)
    weights = [e.weight for e in entries]
    names = [str(ds.path) for ds in datasets]
    streams = []
    for stream, split in ((TRAIN, "train"), (VALIDATION, "validation")):
        sources = []
        for ds in datasets:
            name = f"{ds.path} ({split} split)"
            runs = split_runs(ds.doc_ends, ds.fingerprint, cfg.validation_fraction, split, str(ds.path))  # type: ignore[arg-type]
            sources.append(
                ShuffledSource(PackedSequences(ds, runs, seq_length, name), _dataset_seed(cfg.seed, ds, stream))
            )
        streams.append(
            BlendedSource(
                sources,
                weights,
                seed=[cfg.seed, stream],
                names=names,
                keys=[ds.fingerprint for ds in datasets],
                tokenizer=datasets[0].tokenizer_sha256,
                eos_id=datasets[0].eos_id,
            )
        )
    return streams[0], streams[1]


def run_sources(cfg: RunConfig) -> tuple[SampleSource, SampleSource]:
    """(train, validation) sources of a run: its ``data:`` section at its model's sequence length
    and vocabulary."""
    return build_sources(cfg.data, seq_length=cfg.model.seq_length, vocab_size=cfg.model.vocab_size)
