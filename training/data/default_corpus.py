"""The embedded default corpus: text every Python installation carries, for runs without network.

Contents, in this order (a fixed selection, so the corpus depends only on the Python version):

1. prose: every topic of ``pydoc_data.topics`` (the interpreter's bundled language reference
   pages used by ``help()``), one document per topic, topics sorted by name;
2. code: the standard library's public top-level modules (``<stdlib>/*.py`` whose name does not
   start with ``_``), each at most ``MAX_MODULE_BYTES`` bytes, sorted by file name, one document
   per module, taken while the code total stays within ``CODE_BUDGET_CHARS`` characters.

About 3 MB of text: it tokenizes in a few seconds on two cores.

The ``large`` selection (``data.default_corpus: large``, for pretraining-like runs that must not
repeat their data) adds, after the small selection:

3. every other standard-library ``.py`` file, recursively (packages and tests included), sorted by
   path;
4. the ``.py``, ``.md``, ``.rst`` and ``.txt`` files of the installed packages (``purelib``), sorted
   by path,

each file at most ``LARGE_MAX_FILE_BYTES``, until ``LARGE_BUDGET_CHARS`` characters in all (about
60 MB of text, ~20M tokens at a 2048 vocabulary). Part 4 depends on what is installed: the
manifest lists every document with its hash, and the fingerprint tells two corpora apart. ``write_default_corpus`` writes
it as ``corpus.jsonl`` (objects ``{"text": ..., "source": ...}``) plus ``manifest.json`` with the
Python version, the per-document sources and hashes, and a fingerprint (SHA-256 of
``corpus.jsonl``) so runs on the default corpus are comparable. Runs on different Python versions
get different fingerprints, which is the honest answer: their corpora differ.

The ``pinned`` selection (``data.default_corpus: pinned``, the benchmarks' corpus) depends on
neither: the text of the package archives pinned by hash in ``constraints/bench-corpus.txt``,
fetched by pip into a cache when absent (``training.data.pinned_corpus``). Its fingerprint also
covers the pinned list, so it is the same on every machine; its manifest lists the pinned sources.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data import pinned_corpus
from training.data.fsutil import output_lock, read_json, staging_dir, write_json
from training.errors import DataError

CORPUS_FILE = "corpus.jsonl"
MANIFEST_FILE = "manifest.json"
MAX_MODULE_BYTES = 64 * 1024
CODE_BUDGET_CHARS = 2_500_000
SELECTION_VERSION = 1
LARGE_MAX_FILE_BYTES = 256 * 1024
LARGE_BUDGET_CHARS = 60_000_000
LARGE_SUFFIXES = (".py", ".md", ".rst", ".txt")
SELECTIONS = ("small", "large", "pinned")


@dataclass
class DefaultCorpus:
    """The documents (``{"text", "source"}`` dicts, in corpus order) and their serialised form.

    ``fingerprint`` is the SHA-256 of ``header`` followed by ``corpus.jsonl``; the header is empty
    (the hash of the file alone) except for the pinned selection, where it names the pinned sources.
    """

    documents: list[dict[str, str]]
    header: str = ""
    #: the pinned selection's sources, in order
    pinned: tuple[pinned_corpus.PinnedSource, ...] = ()

    def jsonl(self) -> bytes:
        return "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in self.documents).encode("utf-8")

    def fingerprint(self, jsonl: bytes | None = None) -> str:
        """``jsonl``: this corpus's ``jsonl()`` when the caller has it already."""
        return hashlib.sha256(self.header.encode("utf-8") + (self.jsonl() if jsonl is None else jsonl)).hexdigest()


def _topics() -> list[dict[str, str]]:
    try:
        from pydoc_data.topics import topics  # large module (Python's own docs): loaded only to write the corpus
    except ImportError:  # some distributions package pydoc_data separately
        return []
    return [
        {"source": f"pydoc_data.topics:{name}", "text": topics[name]} for name in sorted(topics) if topics[name].strip()
    ]


def _modules() -> list[dict[str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    documents = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        if path.name.startswith("_") or path.stat().st_size > MAX_MODULE_BYTES:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # a module this installation ships in another encoding is left out, deterministically
        if not text.strip():
            continue
        if total + len(text) > CODE_BUDGET_CHARS:
            break
        total += len(text)
        documents.append({"source": f"stdlib:{path.name}", "text": text})
    return documents


def _tree_files(root: Path, suffixes: tuple[str, ...], skip_packages: bool = False) -> list[Path]:
    """Files under ``root`` with one of ``suffixes``, sorted; ``skip_packages`` leaves out installed
    packages (``site-packages``/``dist-packages``) inside the standard library's tree."""
    files = []
    for path in root.rglob("*"):
        if path.suffix not in suffixes:
            continue
        if skip_packages and {"site-packages", "dist-packages"} & set(path.relative_to(root).parts):
            continue
        try:
            if path.is_file() and 0 < path.stat().st_size <= LARGE_MAX_FILE_BYTES:
                files.append(path)
        except OSError:
            continue
    return sorted(files)


def _large_extra(taken: set[str], budget: int) -> list[dict[str, str]]:
    """Parts 3 and 4 of the large selection, within ``budget`` characters."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    purelib = Path(sysconfig.get_paths()["purelib"])
    parts = [("stdlib", stdlib, _tree_files(stdlib, (".py",), skip_packages=True))]
    if purelib.is_dir():
        parts.append(("site", purelib, _tree_files(purelib, LARGE_SUFFIXES)))
    documents = []
    for prefix, root, files in parts:
        for path in files:
            source = f"{prefix}:{path.relative_to(root).as_posix()}"
            if source in taken:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # deterministic: the same files fail on every call
            if not text.strip():
                continue
            if len(text) > budget:
                return documents
            budget -= len(text)
            documents.append({"source": source, "text": text})
    return documents


def build_default_corpus(
    selection: str = "small",
    *,
    sources_dir: str | Path = pinned_corpus.DEFAULT_SOURCES_DIR,
    source_list: str | Path = pinned_corpus.SOURCE_LIST,
) -> DefaultCorpus:
    """Collect the default corpus (``selection``: small or large from this interpreter, DataError if
    it ships neither part; pinned from ``source_list``'s archives, cached in ``sources_dir``)."""
    if selection not in SELECTIONS:
        raise DataError(f"unknown default corpus selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    if selection == "pinned":
        sources, header, pinned_docs = pinned_corpus.pinned_documents(source_list, sources_dir)
        return DefaultCorpus(pinned_docs, header, tuple(sources))
    documents = _topics() + _modules()
    if selection == "large":
        used = sum(len(d["text"]) for d in documents)
        documents += _large_extra({d["source"] for d in documents}, LARGE_BUDGET_CHARS - used)
    if not documents:
        raise DataError(
            f"this Python ({sys.executable}) ships neither pydoc_data.topics nor standard library sources under "
            f"{sysconfig.get_paths()['stdlib']}; give a corpus explicitly (flm data prepare INPUT ...)"
        )
    return DefaultCorpus(documents)


@dataclass
class DefaultCorpusResult:
    corpus_file: Path
    manifest: dict[str, Any]
    #: False when an identical corpus was already there
    written: bool


def write_default_corpus(
    out_dir: str | Path,
    *,
    force: bool = False,
    selection: str = "small",
    sources_dir: str | Path = pinned_corpus.DEFAULT_SOURCES_DIR,
    source_list: str | Path = pinned_corpus.SOURCE_LIST,
) -> DefaultCorpusResult:
    """Write the default corpus (``selection``; the pinned one's archives cached in ``sources_dir``)
    to ``out_dir`` (idempotent, atomic); see the module docstring."""
    out_dir = Path(out_dir)
    if selection == "pinned":
        # the header (format, filter, pinned archives) determines the text: an up-to-date corpus is
        # reused without fetching or reading the archives (every stage of every run asks)
        expected = pinned_corpus.header(pinned_corpus.read_source_list(source_list))
        with output_lock(out_dir):
            existing = read_json(out_dir / MANIFEST_FILE)
            if (
                existing is not None
                and (existing.get("selection") or {}).get("header") == expected
                and (out_dir / CORPUS_FILE).is_file()
            ):
                return DefaultCorpusResult(out_dir / CORPUS_FILE, existing, False)
    corpus = build_default_corpus(selection, sources_dir=sources_dir, source_list=source_list)
    data = corpus.jsonl()
    fingerprint = corpus.fingerprint(data)
    with output_lock(out_dir):
        existing = read_json(out_dir / MANIFEST_FILE)
        if existing is not None and existing.get("fingerprint") == fingerprint and (out_dir / CORPUS_FILE).is_file():
            return DefaultCorpusResult(out_dir / CORPUS_FILE, existing, False)
        if out_dir.exists() and any(out_dir.iterdir()) and not force and existing is None:
            raise DataError(f"{out_dir} exists and does not hold a default corpus; choose an empty or new --out")
        manifest = {
            "format": "flm-default-corpus",
            "selection_version": SELECTION_VERSION,
            "fingerprint": fingerprint,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "documents": len(corpus.documents),
            "chars": sum(len(d["text"]) for d in corpus.documents),
            "bytes": len(data),
            "selection": {
                "name": selection,
                **(
                    {"max_module_bytes": MAX_MODULE_BYTES, "code_budget_chars": CODE_BUDGET_CHARS}
                    if selection != "pinned"
                    else {}
                ),
                **(
                    {"large_max_file_bytes": LARGE_MAX_FILE_BYTES, "large_budget_chars": LARGE_BUDGET_CHARS}
                    if selection == "large"
                    else {}
                ),
                **(
                    {
                        "suffixes": list(pinned_corpus.SUFFIXES),
                        "max_file_bytes": pinned_corpus.MAX_FILE_BYTES,
                        "header": corpus.header,
                    }
                    if selection == "pinned"
                    else {}
                ),
            },
            "pinned_sources": [
                {
                    "spec": p.spec,
                    "sha256": p.sha256,
                    "documents": sum(1 for d in corpus.documents if d["source"].startswith(p.spec + ":")),
                    "chars": sum(len(d["text"]) for d in corpus.documents if d["source"].startswith(p.spec + ":")),
                }
                for p in corpus.pinned
            ],
            "sources": [
                {
                    "source": d["source"],
                    "chars": len(d["text"]),
                    "sha256": hashlib.sha256(d["text"].encode("utf-8")).hexdigest(),
                }
                for d in corpus.documents
            ],
        }
        with staging_dir(out_dir) as tmp:
            (tmp / CORPUS_FILE).write_bytes(data)
            write_json(tmp / MANIFEST_FILE, manifest)
    return DefaultCorpusResult(out_dir / CORPUS_FILE, manifest, True)
