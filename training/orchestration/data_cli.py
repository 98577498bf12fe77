"""``flm data ...``: tokenizer training, corpus preparation and the embedded default corpus.

``register(subparsers)`` adds the ``data`` command to the ``flm`` parser; every leaf sets
``func(args) -> int``. Errors the user can fix (``DataError``, ``ConfigError``) are reported by
``flm``'s main as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.config import load_run_config
from training.config.data import DEFAULT_SOURCES_DIR
from training.data.sentencepiece_tokenizer import TokenizerSpec
from training.data.shards import DEFAULT_SHARD_TOKENS
from training.errors import DataError

_TOKENIZER_DEFAULTS = TokenizerSpec(vocab_size=0)


def _add_corpus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="corpus files, directories or glob patterns (.jsonl/.json, .parquet, .txt/.md; .gz ok)",
    )
    parser.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    parser.add_argument(
        "--format",
        choices=["auto", "json", "parquet", "text"],
        default="auto",
        help="input format (default: from the file extension)",
    )
    parser.add_argument(
        "--text-unit",
        choices=["document", "paragraph", "line"],
        default="document",
        help="plain text: one document per file, paragraph or line",
    )
    hub = parser.add_argument_group("hub dataset (needs network; instead of INPUT)")
    hub.add_argument("--hub-dataset", metavar="ID", help="Hugging Face dataset id, e.g. owner/name")
    hub.add_argument("--hub-config", help="dataset configuration name")
    hub.add_argument("--hub-split", default="train")
    hub.add_argument("--hub-revision", help="commit or tag to pin (recommended: makes the fingerprint exact)")


def _corpus(args: argparse.Namespace):
    from training.data.ingest import CorpusSpec  # startup time: loaded when a data command runs

    return CorpusSpec(
        inputs=tuple(args.inputs),
        text_field=args.text_field,
        format=args.format,
        text_unit=args.text_unit,
        hub_dataset=args.hub_dataset,
        hub_config=args.hub_config,
        hub_split=args.hub_split,
        hub_revision=args.hub_revision,
    )


def _quiet_datasets() -> None:

    import datasets  # startup time: loaded when a data command runs

    # datasets logs read failures itself before raising; each becomes one DataError line here instead
    datasets.utils.logging.set_verbosity(logging.CRITICAL)


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from training.data.sentencepiece_tokenizer import train_tokenizer  # startup time: loaded when a data command runs

    vocab_size = args.vocab_size
    if vocab_size is None:
        if args.config is None:
            raise DataError(
                "give the vocabulary size: --vocab-size N, or --config RUN.yaml to use its model.vocab_size"
            )

        vocab_size = load_run_config(args.config).model.vocab_size
    _quiet_datasets()
    spec = TokenizerSpec(
        vocab_size=vocab_size,
        model_type=args.model_type,
        sample_chars=args.sample_chars,
        seed=args.seed,
        character_coverage=args.character_coverage,
    )
    result = train_tokenizer(_corpus(args), args.out, spec, force=args.force, num_threads=args.threads)
    state = "trained" if result.trained else "up to date (nothing to do)"
    training = result.meta.get("training", {})
    print(
        f"tokenizer {args.out}: {state}; vocab_size={result.tokenizer.vocab_size} "
        f"sha256={result.tokenizer.sha256} sampled_documents={training.get('sampled_documents')} "
        f"sampled_chars={training.get('sampled_chars')}"
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from training.data.prepare import prepare_dataset  # startup time: loaded when a data command runs

    _quiet_datasets()
    result = prepare_dataset(
        _corpus(args), args.tokenizer, args.out, workers=args.workers, shard_tokens=args.shard_tokens, force=args.force
    )
    m = result.manifest
    state = "prepared" if result.prepared else "up to date (nothing to do)"
    print(
        f"dataset {args.out}: {state}; documents={m['documents']} tokens={m['tokens']} "
        f"shards={len(m['shards'])} dtype={m['dtype']} fingerprint={m['fingerprint']}"
    )
    return 0


def cmd_default_corpus(args: argparse.Namespace) -> int:
    if args.vocab_size is not None:
        from training.data.build import prepare_default_data  # startup time: loaded when a data command runs

        _quiet_datasets()
        info = prepare_default_data(
            args.out, args.vocab_size, workers=args.workers, selection=args.selection, sources_dir=args.sources
        )
        state = "prepared" if info.prepared else "up to date (nothing to do)"
        print(
            f"default data {args.out}: {state}; corpus={info.corpus_dir} tokenizer={info.tokenizer_dir} "
            f"dataset={info.dataset_dir} fingerprint={info.fingerprint}"
        )
        return 0
    from training.data.default_corpus import write_default_corpus  # startup time: loaded when a data command runs

    result = write_default_corpus(args.out, force=args.force, selection=args.selection, sources_dir=args.sources)
    m = result.manifest
    state = "written" if result.written else "up to date (nothing to do)"
    print(
        f"default corpus {result.corpus_file}: {state}; documents={m['documents']} bytes={m['bytes']} "
        f"python={m['python']} selection={args.selection} fingerprint={m['fingerprint']}"
    )
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` with ``tokenizer``, ``prepare`` and ``default-corpus`` to an argparse subparsers object."""
    data = subparsers.add_parser(
        "data",
        help="data pipeline: train a tokenizer, prepare shards, default corpus",
        description="Data pipeline commands (see docs/data.md).",
    )
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    tok = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer on a sample of a corpus")
    _add_corpus_args(tok)
    tok.add_argument("--out", required=True, type=Path, help="tokenizer directory to write")
    tok.add_argument("--vocab-size", type=int, help="vocabulary size (real ids, before TP padding)")
    tok.add_argument("--config", help="run YAML whose model.vocab_size to use when --vocab-size is not given")
    tok.add_argument("--model-type", choices=["bpe", "unigram"], default=_TOKENIZER_DEFAULTS.model_type)
    tok.add_argument(
        "--sample-chars",
        type=int,
        default=_TOKENIZER_DEFAULTS.sample_chars,
        help="train on a seeded sample of about this many characters",
    )
    tok.add_argument("--seed", type=int, default=_TOKENIZER_DEFAULTS.seed, help="seed of the sample")
    tok.add_argument("--character-coverage", type=float, default=_TOKENIZER_DEFAULTS.character_coverage)
    tok.add_argument("--threads", type=int, help="sentencepiece trainer threads (default: CPUs, at most 8)")
    tok.add_argument("--force", action="store_true", help="replace a different tokenizer in --out")
    tok.set_defaults(func=cmd_tokenizer)

    prep = sub.add_parser("prepare", help="tokenize a corpus into packed token shards")
    _add_corpus_args(prep)
    prep.add_argument(
        "--tokenizer",
        required=True,
        help="project tokenizer directory or .model file, or a Hugging Face tokenizer (a model or "
        "tokenizer directory with tokenizer.json, or the tokenizer.json file)",
    )
    prep.add_argument("--out", required=True, type=Path, help="prepared dataset directory to write")
    prep.add_argument("--workers", type=int, default=2, help="tokenizer worker processes")
    prep.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    prep.add_argument("--force", action="store_true", help="replace a different dataset in --out")
    prep.set_defaults(func=cmd_prepare)

    default = sub.add_parser(
        "default-corpus",
        help="write the default corpus: embedded (small, large: no network needed) or pinned (package archives)",
    )
    default.add_argument("--out", required=True, type=Path, help="directory to write")
    default.add_argument(
        "--vocab-size", type=int, help="also train a tokenizer of this size and prepare shards (layout: docs/data.md)"
    )
    default.add_argument("--workers", type=int, default=2, help="with --vocab-size: tokenizer worker processes")
    default.add_argument("--force", action="store_true", help="replace other files in --out")
    default.add_argument(
        "--selection",
        choices=["small", "large", "pinned"],
        default="small",
        help="small: ~3 MB (the dry run's); large: ~60 MB of local sources and docs; pinned: ~60 MB from the "
        "package archives pinned in constraints/bench-corpus.txt, the same on every machine (docs/data.md)",
    )
    default.add_argument(
        "--sources",
        default=DEFAULT_SOURCES_DIR,
        help=f"pinned: cache of the source archives, fetched by pip when absent (default {DEFAULT_SOURCES_DIR})",
    )
    default.set_defaults(func=cmd_default_corpus)
    return data
