"""The ``data:`` section of a run config.

Examples::

    data: {kind: mock, seed: 1234}                     # seeded random tokens (tests, benchmarks)

    data: {kind: default}                              # the embedded default corpus (no network);
                                                       # tokenizer trained to model.vocab_size
    data: {kind: default, default_corpus: large}       # ~60 MB of local sources and docs instead
    data: {kind: default, default_corpus: pinned}      # ~60 MB from package archives pinned in
                                                       # constraints/bench-corpus.txt (benchmarks)
    data:
      kind: prepared                                   # datasets written by `flm data prepare`
      seed: 1234
      datasets:
        - {path: data/web, weight: 0.7}
        - {path: data/code, weight: 0.3}
      tokenizer: data/tokenizer                        # optional: must match the datasets' tokenizer
      validation_fraction: 0.01
      reset_at_eos: true                               # no attention across documents, positions per document

A stage of a staged run may blend other datasets (``stages[i].data: {kind, datasets}``, see
``training.config.stages.STAGE_DATA_KEYS``); the position in the data is carried per dataset
(``training.data.position``, docs/data.md).

Relative paths are resolved against the working directory of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from training.config_base import ConfigError, join_key

#: where the pinned corpus's source archives are cached unless ``data.sources_dir`` says otherwise
DEFAULT_SOURCES_DIR = "~/.cache/flm/corpus-sources"


@dataclass
class DatasetConfig:
    """One prepared dataset of a blend."""

    #: directory written by `flm data prepare --out`
    path: str = ""
    #: relative share of the training samples (weights are normalised over all datasets)
    weight: float = 1.0

    def validate(self, path: str) -> None:
        if not self.path:
            raise ConfigError(
                join_key(path, "path"), "must name a prepared dataset directory (flm data prepare --out DIR)"
            )
        if not self.weight > 0:
            raise ConfigError(join_key(path, "weight"), f"must be > 0, got {self.weight}")


@dataclass
class DataConfig:
    #: mock: seeded random tokens; default: the embedded default corpus; prepared: `datasets` below
    kind: Literal["mock", "default", "prepared"] = "mock"
    #: seed of the sample order (independent of the model's init seed)
    seed: int = 1234
    #: kind=prepared: the datasets to blend, each {path, weight}
    datasets: list[DatasetConfig] = field(default_factory=list)
    #: kind=prepared: tokenizer directory or .model file; null uses the copy inside the datasets
    tokenizer: Optional[str] = None
    #: share of each dataset's documents held out for validation (chosen from the dataset's fingerprint)
    validation_fraction: float = 0.01
    #: kind=default: where the default corpus, its tokenizer and shards are built and cached
    default_dir: str = "~/.cache/flm/default-data"
    #: kind=default: small (~3 MB: Python's docs and small stdlib modules; the dry run's data),
    #: large (~60 MB: plus all stdlib and installed packages' sources and docs, for runs that
    #: must not repeat their data; depends on the installation), or pinned (~60 MB of docs and code
    #: from the package archives pinned in constraints/bench-corpus.txt: the same corpus and
    #: fingerprint on every machine; the benchmarks' corpus); cached under ``default_dir/<name>``
    default_corpus: Literal["small", "large", "pinned"] = "small"
    #: kind=default, default_corpus=pinned: cache of the pinned source archives (fetched by pip when
    #: absent; a machine without a package index needs them copied here)
    sources_dir: str = DEFAULT_SOURCES_DIR
    #: kind=default: tokenizer worker processes used when the cache is built
    workers: int = 2
    #: inside a packed window, tokens attend only to their own document (the window up to and including
    #: the previous eos is masked) and position ids restart at 0 after each eos: Megatron-LM's
    #: reset_attention_mask + reset_position_ids. Training and validation batches alike
    reset_at_eos: bool = False

    def validate(self, path: str) -> None:
        if self.seed < 0:
            raise ConfigError(join_key(path, "seed"), "must be >= 0")
        if self.kind != "prepared" and self.datasets:
            raise ConfigError(
                join_key(path, "datasets"),
                f"is read only with kind: prepared (kind is {self.kind!r}); set kind: prepared or remove datasets",
            )
        if self.reset_at_eos and self.kind == "mock":
            raise ConfigError(
                join_key(path, "reset_at_eos"),
                "mock data has no documents (no eos to reset at); use kind default or prepared, or set it false",
            )
        if self.kind == "prepared" and not self.datasets:
            raise ConfigError(
                join_key(path, "datasets"),
                "kind 'prepared' needs at least one dataset, e.g. datasets: [{path: data/web, weight: 1.0}]",
            )
        seen: set[str] = set()
        for i, entry in enumerate(self.datasets):
            if entry.path in seen:
                raise ConfigError(
                    join_key(path, f"datasets[{i}].path"),
                    f"{entry.path!r} is listed twice; give it once with the summed weight",
                )
            seen.add(entry.path)
        if not 0.0 < self.validation_fraction <= 0.5:
            raise ConfigError(
                join_key(path, "validation_fraction"), f"must be in (0, 0.5], got {self.validation_fraction}"
            )
        if not self.default_dir:
            raise ConfigError(join_key(path, "default_dir"), "must be a directory path")
        if self.workers < 1:
            raise ConfigError(join_key(path, "workers"), "must be >= 1")
        if not self.sources_dir:
            raise ConfigError(join_key(path, "sources_dir"), "must be a directory path")
        if self.sources_dir != DEFAULT_SOURCES_DIR and (self.kind, self.default_corpus) != ("default", "pinned"):
            raise ConfigError(
                join_key(path, "sources_dir"),
                "is only used by kind: default with default_corpus: pinned; remove it or set those",
            )
