"""Source datasets of symbolic mapping: where they live, how records are checked and rendered.

Two places a dataset can come from, both read through the ``datasets`` library:

* **hub** (online): ``aps/super_glue`` (configs boolq, wic, rte, wsc.fixed) and ``clue/clue``
  (afqmc, csl, ocnli, cluewsc2020); evaluation records come from ``validation``, demonstrations
  from ``train``. BUSTM is not on the hub under ``clue/clue`` and is local-only.
* **local** directory ``DATA_DIR`` in the original file layouts::

      DATA_DIR/superglue/{BoolQ,WiC,RTE,WSC}/{val.jsonl,train.jsonl}          (SuperGLUE / FewGLUE)
      DATA_DIR/clue/<task>/{dev.json,train.json} or {dev_few_all.json,train_few_all.json}
                                                                              (CLUE / FewCLUE)

  with ``<task>`` one of ``afqmc`` (or ``afqmc_public``), ``csl``, ``ocnli``, ``cluewsc`` (or
  ``cluewsc2020``), ``bustm``. ``../shared/data`` of this project is such a directory (it has no
  AFQMC).

Records are normalised to flat dicts with a canonical lower-case string ``label`` (bools become
``"true"``/``"false"``; hub ``ClassLabel`` integers become their names). Records without a gold
label (e.g. OCNLI's ``"-"``, hub ``-1``) are dropped; any other label, a missing field or a file
that is not JSON lines raises :class:`MalformedDataError` naming the file and record.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_iq.errors import DataNotFoundError, MalformedDataError

DATA_DIR_ENV = "FLM_IQ_DATA_DIR"
_UNLABELLED = {"-", "", "none", "null"}


@dataclass(frozen=True)
class SymbolicSource:
    """One classification dataset used by a symbolic-mapping subtask."""

    name: str
    family: str  # "superglue" | "clue"
    hub_path: str | None
    hub_name: str | None
    local_dirs: tuple[str, ...]
    labels: tuple[str, ...]
    fields: tuple[str, ...]
    render: Callable[[dict[str, Any]], str]

    @property
    def answer_prefix(self) -> str:
        return "Answer:" if self.family == "superglue" else "答案："


def mark_word(text: str, index: int, span: str) -> str:
    """SuperGLUE WSC: wrap the pronoun at word ``index`` in asterisks (``*he*``), so repeated
    pronouns are unambiguous. Off-by-one indices (one record in the FewGLUE copy) are resolved to
    the nearest matching word; if none matches within two words the text is left unmarked."""
    words = text.split()
    for i in sorted(range(max(0, index - 2), min(len(words), index + 3)), key=lambda j: abs(j - index)):
        if words[i].lower().startswith(span.lower()):
            words[i] = f"*{words[i][: len(span)]}*{words[i][len(span) :]}"
            return " ".join(words)
    return text


def mark_char(text: str, index: int, span: str) -> str:
    """CLUEWSC: wrap the pronoun at character ``index`` in asterisks when the offset matches."""
    if text[index : index + len(span)] == span:
        return f"{text[:index]}*{span}*{text[index + len(span) :]}"
    return text


def _q(text: str) -> str:
    text = text.strip()
    return text if text.endswith("?") else text + "?"


SOURCES: dict[str, SymbolicSource] = {
    s.name: s
    for s in (
        SymbolicSource(
            "boolq",
            "superglue",
            "aps/super_glue",
            "boolq",
            ("BoolQ",),
            ("false", "true"),
            ("passage", "question"),
            lambda r: f"Passage: {r['passage']}\nQuestion: {_q(r['question'])}",
        ),
        SymbolicSource(
            "wic",
            "superglue",
            "aps/super_glue",
            "wic",
            ("WiC",),
            ("false", "true"),
            ("word", "sentence1", "sentence2"),
            lambda r: (
                f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\n"
                f'Question: Is the word "{r["word"]}" used with the same meaning in both sentences?'
            ),
        ),
        SymbolicSource(
            "rte",
            "superglue",
            "aps/super_glue",
            "rte",
            ("RTE",),
            ("entailment", "not_entailment"),
            ("premise", "hypothesis"),
            lambda r: f"Premise: {r['premise']}\nHypothesis: {r['hypothesis']}",
        ),
        SymbolicSource(
            "wsc",
            "superglue",
            "aps/super_glue",
            "wsc.fixed",
            ("WSC",),
            ("false", "true"),
            ("text", "span1_text", "span2_text", "span2_index"),
            lambda r: (
                f"Passage: {mark_word(r['text'], int(r['span2_index']), r['span2_text'])}\n"
                f'Question: In the passage above, does the pronoun "*{r["span2_text"]}*" refer to '
                f'"{r["span1_text"]}"?'
            ),
        ),
        SymbolicSource(
            "afqmc",
            "clue",
            "clue/clue",
            "afqmc",
            ("afqmc", "afqmc_public"),
            ("0", "1"),
            ("sentence1", "sentence2"),
            lambda r: f"句子一：{r['sentence1']}\n句子二：{r['sentence2']}",
        ),
        SymbolicSource(
            "csl",
            "clue",
            "clue/clue",
            "csl",
            ("csl", "csl_public"),
            ("0", "1"),
            ("abst", "keyword"),
            lambda r: f"摘要：{r['abst']}\n关键词：{'，'.join(r['keyword'])}",
        ),
        SymbolicSource(
            "ocnli",
            "clue",
            "clue/clue",
            "ocnli",
            ("ocnli", "ocnli_public"),
            ("entailment", "neutral", "contradiction"),
            ("sentence1", "sentence2"),
            lambda r: f"前提：{r['sentence1']}\n假设：{r['sentence2']}",
        ),
        SymbolicSource(
            "cluewsc",
            "clue",
            "clue/clue",
            "cluewsc2020",
            ("cluewsc", "cluewsc2020", "cluewsc2020_public"),
            ("false", "true"),
            ("text", "span1_text", "span2_text", "span2_index"),
            lambda r: (
                f"{mark_char(r['text'], int(r['span2_index']), r['span2_text'])}\n"
                f"问题：“*{r['span2_text']}*”指的是“{r['span1_text']}”吗？"
            ),
        ),
        SymbolicSource(
            "bustm",
            "clue",
            None,
            None,
            ("bustm",),
            ("0", "1"),
            ("sentence1", "sentence2"),
            lambda r: f"句子一：{r['sentence1']}\n句子二：{r['sentence2']}",
        ),
    )
}

LOCAL_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "superglue": {"eval": ("val.jsonl",), "shots": ("train.jsonl",)},
    "clue": {"eval": ("dev.json", "dev_few_all.json"), "shots": ("train.json", "train_few_all.json")},
}
HUB_SPLITS = {"eval": "validation", "shots": "train"}


@dataclass(frozen=True)
class SourceData:
    """Normalised records of one dataset: evaluation pool, demonstration pool, and provenance."""

    eval_records: tuple[dict[str, Any], ...]
    shot_records: tuple[dict[str, Any], ...]
    origin: dict[str, str]
    dropped_unlabelled: int


def canonical_label(value: Any, names: list[str] | None) -> str | None:
    """Map a raw label to a canonical lower-case string; ``None`` means "no gold label"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if names is None:
            return str(value)
        return names[value].strip().lower() if 0 <= value < len(names) else None
    if value is None:
        return None
    text = str(value).strip().lower()
    return None if text in _UNLABELLED else text


def normalise_records(
    source: SymbolicSource, rows: list[dict[str, Any]], label_names: list[str] | None, where: str
) -> tuple[list[dict[str, Any]], int]:
    """Flatten, check and label-normalise raw rows. Returns (records, number dropped unlabelled)."""
    out: list[dict[str, Any]] = []
    dropped = 0
    for i, raw in enumerate(rows):
        rec = dict(raw)
        target = rec.pop("target", None)
        if isinstance(target, dict):  # SuperGLUE/CLUE WSC keep spans under "target"
            rec.update(target)
        if "label" not in rec:
            raise MalformedDataError(f"{where}: record {i} has no 'label' field (fields: {sorted(rec)})")
        label = canonical_label(rec["label"], label_names)
        if label is None:
            dropped += 1
            continue
        if label not in source.labels:
            raise MalformedDataError(
                f"{where}: record {i} has label {rec['label']!r}; {source.name} labels are {', '.join(source.labels)}"
            )
        for f in source.fields:
            value = rec.get(f)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise MalformedDataError(
                    f"{where}: record {i} lacks field {f!r} needed by {source.name} (fields: {sorted(rec)})"
                )
        rec["label"] = label
        out.append(rec)
    if not out:
        raise MalformedDataError(f"{where}: no labelled records for {source.name}")
    return out, dropped


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    import datasets  # startup time (flm imports this module for its parser)

    try:
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as err:  # datasets wraps JSON/Arrow errors in several exception types
        cause = err.__cause__ or err
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise MalformedDataError(f"{path}: cannot be read as JSON lines (one JSON object per line): {first}") from err
    return ds.to_list()


def local_file(source: SymbolicSource, data_dir: Path, which: str) -> Path:
    """The local file of ``which`` ("eval" or "shots"); DataNotFoundError lists what was tried."""
    if not data_dir.is_dir():
        raise DataNotFoundError(
            f"data directory not found: {data_dir} (pass an existing directory with superglue/ "
            f"and/or clue/ subfolders, e.g. ../shared/data)"
        )
    tried = []
    for d in source.local_dirs:
        for name in LOCAL_FILES[source.family][which]:
            candidate = data_dir / source.family / d / name
            tried.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise DataNotFoundError(
        f"{source.name}: no {which} file in {data_dir}; looked for: {', '.join(tried)}. Provide the "
        f"file, choose other subtasks with --subtasks, or pass --skip-unavailable"
    )


@functools.lru_cache(maxsize=32)
def _load_local(name: str, data_dir: str, mtimes: tuple[float, ...]) -> SourceData:
    source = SOURCES[name]
    pools = {}
    origin = {}
    dropped = 0
    for which in ("eval", "shots"):
        path = local_file(source, Path(data_dir), which)
        recs, n = normalise_records(source, _read_json_lines(path), None, str(path))
        pools[which] = tuple(recs)
        origin[which] = str(path)
        dropped += n
    return SourceData(pools["eval"], pools["shots"], origin, dropped)


@functools.lru_cache(maxsize=32)
def _load_hub(name: str) -> SourceData:
    import datasets  # startup time (flm imports this module for its parser)

    source = SOURCES[name]
    if source.hub_path is None:
        raise DataNotFoundError(f"{name} has no hub copy; pass a local data directory (--data-dir)")
    if datasets.config.HF_HUB_OFFLINE:
        raise DataNotFoundError(
            f"{name}: offline, and no local data directory given. Pass --data-dir DIR to flm iq, "
            f'--metadata \'{{"iq_data_dir": "DIR"}}\' to lm_eval, or set {DATA_DIR_ENV}=DIR'
        )
    pools = {}
    origin = {}
    dropped = 0
    for which, split in HUB_SPLITS.items():
        where = f"{source.hub_path}:{source.hub_name}:{split}"
        try:
            ds = datasets.load_dataset(source.hub_path, source.hub_name, split=split)
        except Exception as err:
            raise DataNotFoundError(f"cannot load {where} from the hub: {err}") from err
        feature = ds.features.get("label")
        names = list(feature.names) if hasattr(feature, "names") else None
        recs, n = normalise_records(source, ds.to_list(), names, where)
        pools[which] = tuple(recs)
        origin[which] = where
        dropped += n
    return SourceData(pools["eval"], pools["shots"], origin, dropped)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """Explicit directory, else ``$FLM_IQ_DATA_DIR``, else ``None`` (meaning: the hub)."""
    if data_dir not in (None, ""):
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser().resolve() if env else None


def load_source(name: str, data_dir: str | os.PathLike[str] | None) -> SourceData:
    """Load and normalise dataset ``name`` from ``data_dir`` (local) or the hub (``None``)."""
    if name not in SOURCES:
        raise KeyError(name)
    resolved = resolve_data_dir(data_dir)
    if resolved is None:
        return _load_hub(name)
    source = SOURCES[name]
    files = [local_file(source, resolved, w) for w in ("eval", "shots")]
    return _load_local(name, str(resolved), tuple(f.stat().st_mtime_ns for f in files))
