"""Reading a text corpus through ``datasets``: local JSONL / Parquet / plain-text files or a hub dataset.

A corpus is described by a ``CorpusSpec`` (inputs, text field, format). ``resolve_files`` expands
it into a sorted, de-duplicated list of ``InputFile`` (each with its size and SHA-256), and
``corpus_fingerprint`` hashes the file *contents* and reading settings, so the same corpus under
another path or name has the same fingerprint. ``iter_documents`` streams the documents:

* order: files in resolved order, rows in file order -- deterministic for a given spec;
* one ``DocumentBatch`` per up to ``batch_rows`` rows of one file, texts as ``str``;
* empty and whitespace-only texts are dropped and counted in ``DocumentBatch.skipped``;
* every problem raises ``DataError`` naming the file (and the line for JSONL and text): a missing
  path, a line that is not JSON, an object without the text field or with a non-string value,
  bytes that are not UTF-8. Invalid UTF-8 is always an error, never replaced silently.

Files are read with ``datasets.load_dataset(..., streaming=True)`` one file at a time, so inputs
larger than memory stream and every document is attributed to its file. Local reads never touch
the network (see ``_local_only``). Plain-text files are normalised by Python's universal-newline
reading ("\\r\\n" and "\\r" become "\\n"); everything else is passed through unchanged.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import glob
import gzip
import json
import lzma
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Optional

from training.data.fsutil import sha256_file, sha256_json
from training.errors import DataError

Format = Literal["auto", "json", "parquet", "text"]
TextUnit = Literal["document", "paragraph", "line"]

#: file extension -> datasets builder
EXTENSIONS = {
    ".jsonl": "json",
    ".json": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
#: compression suffixes datasets decompresses on the fly (and ``_open_binary`` for diagnostics)
COMPRESSIONS = (".gz", ".bz2", ".xz")
_GLOB_CHARS = set("*?[")
#: bumped when the reading semantics change, so old fingerprints stop matching
READER_VERSION = 1


@dataclass(frozen=True)
class CorpusSpec:
    """What to read. ``inputs`` are files, directories (searched recursively) or glob patterns."""

    inputs: tuple[str, ...] = ()
    #: the field (JSONL) or column (Parquet) holding the text; plain text files have no field
    text_field: str = "text"
    #: auto: from the file extension (.jsonl/.json/.ndjson, .parquet, .txt/.text/.md, optionally .gz/.bz2/.xz)
    format: Format = "auto"
    #: plain text only: one document per file, per blank-line separated paragraph, or per line
    text_unit: TextUnit = "document"
    #: a Hugging Face hub dataset id instead of local inputs (needs network)
    hub_dataset: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: str = "train"
    hub_revision: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(str(p) for p in self.inputs))
        if self.hub_dataset and self.inputs:
            raise DataError("give either input files or a hub dataset, not both")
        if not self.hub_dataset and not self.inputs:
            raise DataError("no corpus given: pass input files, directories or globs (or a hub dataset id)")
        if self.format not in ("auto", "json", "parquet", "text"):
            raise DataError(f"unknown format {self.format!r}; allowed: auto, json, parquet, text")
        if self.text_unit not in ("document", "paragraph", "line"):
            raise DataError(f"unknown text unit {self.text_unit!r}; allowed: document, paragraph, line")
        if not self.text_field:
            raise DataError("the text field name must not be empty")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        return data


@dataclass(frozen=True)
class InputFile:
    path: Path
    #: the datasets builder that reads it: json, parquet or text
    format: str
    size: int
    mtime_ns: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "sha256": self.sha256,
        }


@dataclass
class DocumentBatch:
    #: index into the resolved file list (0 for a hub dataset)
    file_index: int
    texts: list[str] = field(default_factory=list)
    #: rows dropped because their text was empty or whitespace only
    skipped: int = 0


def _format_of(path: Path, forced: str) -> str:
    if forced != "auto":
        return forced
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in EXTENSIONS:
        raise DataError(
            f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; known extensions: "
            f"{', '.join(sorted(EXTENSIONS))}; pass --format json|parquet|text to choose it"
        )
    return EXTENSIONS[ext]


def _expand(item: str, forced: str) -> list[Path]:
    expanded = os.path.expanduser(item)
    if _GLOB_CHARS & set(expanded):
        matches = sorted(Path(p) for p in glob.glob(expanded, recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"input pattern {item!r} matches no files; check the path and the pattern")
        return matches
    path = Path(expanded)
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and (forced != "auto" or _known_extension(p))
        )
        if not found:
            raise DataError(
                f"input directory {path} contains no corpus files (looked for {', '.join(sorted(EXTENSIONS))})"
            )
        return found
    if not path.exists():
        raise DataError(f"input file not found: {path}; check the path (relative paths start at {Path.cwd()})")
    return [path]


def _known_extension(path: Path) -> bool:
    try:
        _format_of(path, "auto")
    except DataError:
        return False
    return True


def resolve_files(spec: CorpusSpec, known: dict[str, dict[str, Any]] | None = None) -> list[InputFile]:
    """Expand ``spec.inputs`` into files with their content hashes (empty for a hub dataset).

    ``known`` maps a path to a record from an earlier manifest (``InputFile.to_json``); when the
    size and modification time still match, its hash is reused instead of re-reading the file.
    """
    if spec.hub_dataset:
        return []
    seen: set[Path] = set()
    files: list[InputFile] = []
    for item in spec.inputs:
        for path in _expand(item, spec.format):
            path = path.resolve()
            if path in seen:
                continue
            seen.add(path)
            fmt = _format_of(path, spec.format)
            stat = path.stat()
            record = (known or {}).get(str(path))
            if record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
                digest = record["sha256"]
            else:
                digest = sha256_file(path)
            files.append(InputFile(path, fmt, stat.st_size, stat.st_mtime_ns, digest))
    return files


def corpus_fingerprint(spec: CorpusSpec, files: list[InputFile]) -> str:
    """Hash of what the reader produces: file formats and contents in order, plus reading settings."""
    if spec.hub_dataset:
        source: Any = {
            "hub": spec.hub_dataset,
            "config": spec.hub_config,
            "split": spec.hub_split,
            "revision": spec.hub_revision,
        }
    else:
        source = [[f.format, f.sha256] for f in files]
    return sha256_json(
        {"reader": READER_VERSION, "source": source, "text_field": spec.text_field, "text_unit": spec.text_unit}
    )


@contextlib.contextmanager
def _local_only() -> Iterator[None]:
    """Make ``load_dataset`` for local files free of network calls.

    ``datasets`` sends a "download count" HEAD request even for its packaged json/parquet/text
    builders unless it is offline; we switch that off (as HF_DATASETS_OFFLINE=1 would) while a
    local file is opened, without changing the process-wide setting for hub reads.
    """
    import datasets.config as dconfig  # startup time (flm imports this module for its parser)

    overrides = {"HF_UPDATE_DOWNLOAD_COUNTS": False, "HF_HUB_OFFLINE": True, "HF_DATASETS_OFFLINE": True}
    saved = {name: getattr(dconfig, name) for name in overrides if hasattr(dconfig, name)}
    for name in saved:
        setattr(dconfig, name, overrides[name])
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(dconfig, name, value)


def _open_binary(path: Path) -> IO[bytes]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _utf8_problem(path: Path, lineno: int, raw: bytes) -> str | None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return (
            f"{path}:{lineno}: bytes are not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}: "
            f"{err.reason}); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8"
        )
    return None


def _diagnose_json(path: Path, text_field: str) -> str | None:
    """First problem in a JSON-lines file, as a message naming the line; None if none is found."""
    # Done by hand because datasets/pyarrow report a failing row of a 10 MB block, not a file line.
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            problem = _utf8_problem(path, lineno, raw)
            if problem:
                return problem
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as err:
                return (
                    f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno}); "
                    "each line must be one JSON object"
                )
            if not isinstance(obj, dict):
                return f"{path}:{lineno}: a JSON {type(obj).__name__} is not an object; each line must be a JSON object"
            if text_field not in obj:
                fields = ", ".join(sorted(obj)) or "none"
                return (
                    f"{path}:{lineno}: the object has no field {text_field!r} (its fields: {fields}); "
                    "choose the text field with --text-field"
                )
            if not isinstance(obj[text_field], str):
                kind = "null" if obj[text_field] is None else type(obj[text_field]).__name__
                return f"{path}:{lineno}: field {text_field!r} is {kind}, expected a string"
    return None


def _diagnose_text(path: Path) -> str | None:
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            problem = _utf8_problem(path, lineno, raw)
            if problem:
                return problem
    return None


def _failure(file: InputFile, text_field: str, err: BaseException | None, detail: str = "") -> DataError:
    """The DataError for a file that failed to read: a precise diagnosis where one can be made."""
    message = None
    if file.format == "json":
        message = _diagnose_json(file.path, text_field)
    elif file.format == "text":
        message = _diagnose_text(file.path)
    if message is None:
        cause = detail or f"{type(err).__name__}: {err}"
        message = f"{file.path}: cannot be read as {file.format}: {cause}"
    return DataError(message)


def _json_has_agent_traces() -> bool:
    """Whether this datasets release's JSON builder has the (newer) agent-trace detection switch."""

    from datasets.packaged_modules.json.json import JsonConfig  # startup time (flm imports this module for its parser)

    return any(f.name == "parse_agent_traces" for f in dataclasses.fields(JsonConfig))


def _load_local(file: InputFile, spec: CorpusSpec):
    import datasets  # startup time (flm imports this module for its parser)

    kwargs: dict[str, Any] = {}
    if file.format == "json":
        if _json_has_agent_traces():
            kwargs["parse_agent_traces"] = False  # objects with "type"/"message" keys are not chat traces here
    elif file.format == "text":
        kwargs["sample_by"] = spec.text_unit
        kwargs["keep_linebreaks"] = False
    elif file.format == "parquet":
        _check_parquet_schema(file.path, spec.text_field)
        kwargs["columns"] = [spec.text_field]
    with _local_only():
        return datasets.load_dataset(file.format, data_files=[str(file.path)], split="train", streaming=True, **kwargs)


def _check_parquet_schema(path: Path, text_field: str) -> None:
    import pyarrow as pa  # startup time (flm imports this module for its parser)
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if text_field not in schema.names:
        raise DataError(
            f"{path}: has no column {text_field!r} (its columns: {', '.join(schema.names)}); "
            "choose the text column with --text-field"
        )
    kind = schema.field(text_field).type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind)):
        raise DataError(f"{path}: column {text_field!r} has type {kind}, expected strings")


def _text_column(file: InputFile, spec: CorpusSpec) -> str:
    return "text" if file.format == "text" else spec.text_field


def _checked_texts(values: Any, file: InputFile, spec: CorpusSpec, first_row: int) -> list[str]:
    if values is None or any(not isinstance(v, str) for v in values):
        row = first_row
        if values is not None:
            row += next(i for i, v in enumerate(values) if not isinstance(v, str))
        raise _failure(file, spec.text_field, None, f"row {row} has no string in field {_text_column(file, spec)!r}")
    return values


def _keep(texts: list[str], file_index: int) -> DocumentBatch:
    kept = [t for t in texts if t and not t.isspace()]
    return DocumentBatch(file_index, kept, len(texts) - len(kept))


def _iter_file(index: int, file: InputFile, spec: CorpusSpec, batch_rows: int) -> Iterator[DocumentBatch]:
    if file.size == 0:
        return
    column = _text_column(file, spec)
    rows = 0
    try:
        dataset = _load_local(file, spec)
        for batch in dataset.iter(batch_size=batch_rows):
            texts = _checked_texts(batch.get(column), file, spec, rows)
            rows += len(texts)
            yield _keep(texts, index)
    except DataError:
        raise
    except Exception as err:  # datasets/pyarrow raise many types; each becomes a DataError naming the file
        raise _failure(file, spec.text_field, err) from err


def _iter_hub(spec: CorpusSpec, batch_rows: int) -> Iterator[DocumentBatch]:
    import datasets  # startup time (flm imports this module for its parser)
    import datasets.config as dconfig

    name = spec.hub_dataset
    if dconfig.HF_HUB_OFFLINE:
        raise DataError(
            f"hub dataset {name!r} requested but datasets is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); "
            "download it elsewhere and pass the files as inputs"
        )
    try:
        dataset = datasets.load_dataset(
            name, name=spec.hub_config, split=spec.hub_split, revision=spec.hub_revision, streaming=True
        )
        rows = 0
        for batch in dataset.iter(batch_size=batch_rows):
            values = batch.get(spec.text_field)
            if values is None or any(not isinstance(v, str) for v in values):
                raise DataError(
                    f"hub dataset {name!r}: row {rows} has no string field {spec.text_field!r} "
                    f"(fields: {', '.join(sorted(batch))}); choose it with --text-field"
                )
            rows += len(values)
            yield _keep(values, 0)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"hub dataset {name!r}: cannot be read: {type(err).__name__}: {err}") from err


def iter_documents(spec: CorpusSpec, files: list[InputFile], batch_rows: int = 1024) -> Iterator[DocumentBatch]:
    """Stream the corpus as batches of non-empty texts (see the module docstring for the contract)."""
    if spec.hub_dataset:
        yield from _iter_hub(spec, batch_rows)
        return
    for index, file in enumerate(files):
        yield from _iter_file(index, file, spec, batch_rows)


def describe_source(spec: CorpusSpec, files: list[InputFile]) -> str:
    if spec.hub_dataset:
        return f"hub dataset {spec.hub_dataset!r}"
    if len(files) == 1:
        return str(files[0].path)
    return f"{len(files)} files ({files[0].path} ... {files[-1].path})"
