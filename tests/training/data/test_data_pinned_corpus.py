"""The pinned corpus (training/data/pinned_corpus.py): deterministic extraction and fingerprint from
hash-pinned archives, fetched by pip into the cache, and one-line errors for bad lists and offline
machines. Archives here are tiny ones the tests write; pip is pointed at a local folder, never an index."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from training.config import RunConfig
from training.config.data import DEFAULT_SOURCES_DIR, DataConfig
from training.config_base import ConfigError, from_dict
from training.data.build import default_data_dir
from training.data.default_corpus import build_default_corpus, write_default_corpus
from training.data.pinned_corpus import MAX_FILE_BYTES, SOURCE_LIST, fetch_sources, read_source_list
from training.errors import DataError


def _sdist(path: Path, files: dict[str, bytes], mtime: int = 0, reverse: bool = False) -> str:
    """A .tar.gz with ``files`` (added in reverse order when ``reverse``); returns its sha256."""
    with tarfile.open(path, "w:gz") as tf:
        for name in sorted(files, reverse=reverse):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(files[name]), mtime
            tf.addfile(info, io.BytesIO(files[name]))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wheel(path: Path, name: str, version: str, files: dict[str, bytes]) -> str:
    """A minimal pure-Python wheel pip accepts; returns its sha256."""
    info = f"{name}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    everything = {**files, **meta}
    record = "".join(f"{n},,\n" for n in everything) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in everything.items():
            zf.writestr(n, data)
        zf.writestr(f"{info}/RECORD", record)
    return hashlib.sha256(path.read_bytes()).hexdigest()


PROSE = b"The quick brown fox.\r\nIt jumps over the lazy dog.\rEnd.\n"
FILES = {
    "alpha-1.0/docs/intro.txt": PROSE,
    "alpha-1.0/alpha/__init__.py": b'"""Alpha: a package."""\n',
    "alpha-1.0/alpha/core.py": b"\xef\xbb\xbfdef f():\n    return 1\n",  # BOM dropped
    "alpha-1.0/docs/logo.png": b"\x89PNG not text",  # suffix filter
    "alpha-1.0/docs/latin1.txt": b"caf\xe9\n",  # not UTF-8: left out
    "alpha-1.0/docs/huge.rst": b"x" * (MAX_FILE_BYTES + 1),  # over the size cap
    "alpha-1.0/docs/empty.md": b"  \n",
}


def _list(path: Path, entries: list[tuple[str, str]]) -> Path:
    path.write_text("# test sources\n" + "".join(f"{spec} --hash=sha256:{h}  # comment\n" for spec, h in entries))
    return path


@pytest.fixture()
def two_sources(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    a = _sdist(cache / "alpha-1.0.tar.gz", FILES)
    b = _wheel(cache / "beta-2.0-py3-none-any.whl", "beta", "2.0", {"beta/README.md": b"# Beta\n\nProse.\n"})
    return cache, _list(tmp_path / "sources.txt", [("alpha==1.0", a), ("beta==2.0", b)]), a, b


def test_pinned_corpus_is_deterministic_and_fingerprints_its_sources(two_sources, tmp_path):
    cache, sources, a, b = two_sources
    first = build_default_corpus("pinned", sources_dir=cache, source_list=sources)
    assert [d["source"] for d in first.documents] == [
        "alpha==1.0:alpha-1.0/alpha/__init__.py",
        "alpha==1.0:alpha-1.0/alpha/core.py",
        "alpha==1.0:alpha-1.0/docs/intro.txt",
        "beta==2.0:beta/README.md",
    ]
    texts = {d["source"].rsplit("/", 1)[1]: d["text"] for d in first.documents}
    assert texts["intro.txt"] == "The quick brown fox.\nIt jumps over the lazy dog.\nEnd.\n"
    assert texts["core.py"].startswith("def f")
    assert build_default_corpus("pinned", sources_dir=cache, source_list=sources).fingerprint() == first.fingerprint()

    # another archive of the same files (other member order and mtimes): the same documents
    other = tmp_path / "other"
    other.mkdir()
    a2 = _sdist(other / "alpha-1.0.tar.gz", FILES, mtime=123456, reverse=True)
    (other / "beta-renamed.whl").write_bytes((cache / "beta-2.0-py3-none-any.whl").read_bytes())  # found by hash
    again = build_default_corpus(
        "pinned", sources_dir=other, source_list=_list(tmp_path / "s2.txt", [("alpha==1.0", a2), ("beta==2.0", b)])
    )
    assert again.documents == first.documents and again.fingerprint() != first.fingerprint()  # the pin differs

    changed = dict(FILES, **{"alpha-1.0/docs/intro.txt": PROSE.replace(b"lazy", b"busy")})
    a3 = _sdist(other / "alpha-changed.tar.gz", changed)
    edited = build_default_corpus(
        "pinned", sources_dir=other, source_list=_list(tmp_path / "s3.txt", [("alpha==1.0", a3), ("beta==2.0", b)])
    )
    reordered = build_default_corpus(
        "pinned", sources_dir=cache, source_list=_list(tmp_path / "s4.txt", [("beta==2.0", b), ("alpha==1.0", a)])
    )
    assert len({first.fingerprint(), edited.fingerprint(), reordered.fingerprint()}) == 3

    written = write_default_corpus(tmp_path / "out", selection="pinned", sources_dir=cache, source_list=sources)
    m = written.manifest
    assert written.written and m["fingerprint"] == first.fingerprint()
    assert [(p["spec"], p["sha256"], p["documents"]) for p in m["pinned_sources"]] == [
        ("alpha==1.0", a, 3),
        ("beta==2.0", b, 1),
    ]
    # up to date: reused from the manifest without the archives
    for path in cache.iterdir():
        path.unlink()
    assert not write_default_corpus(
        tmp_path / "out", selection="pinned", sources_dir=cache, source_list=sources
    ).written


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("alpha --hash=sha256:" + "0" * 64, "is not a pinned source"),
        ("alpha==1.0", "is not a pinned source"),
        ("alpha==1.0 --hash=sha256:abc", "is not a pinned source"),
        ("alpha==1.0 --hash=md5:" + "0" * 32, "is not a pinned source"),
    ],
)
def test_bad_source_lines_name_file_and_line(tmp_path, line, match):
    path = tmp_path / "s.txt"
    path.write_text("# header\n\n" + line + "\n")
    with pytest.raises(DataError, match=rf"s\.txt:3: .*{match}"):
        read_source_list(path)


def test_duplicate_and_empty_lists_are_refused(tmp_path):
    h = "a" * 64
    with pytest.raises(DataError, match=r"s\.txt:3: Alpha_Pkg is already listed at .*s\.txt:2"):
        read_source_list(_list(tmp_path / "s.txt", [("alpha-pkg==1", h), ("Alpha_Pkg==2", h)]))
    with pytest.raises(DataError, match="lists no source"):
        read_source_list(_list(tmp_path / "e.txt", []))
    with pytest.raises(DataError, match="cannot read the corpus source list"):
        read_source_list(tmp_path / "missing.txt")


def test_missing_source_is_fetched_by_pip_and_offline_is_one_line(tmp_path, monkeypatch):
    """pip reads its index settings from the environment: no index, only a local folder."""
    links, cache = tmp_path / "links", tmp_path / "cache"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    wheel = tmp_path / "fakecorpus-1.0-py3-none-any.whl"
    digest = _wheel(wheel, "fakecorpus", "1.0", {"fakecorpus/notes.txt": b"Some prose.\n"})
    sources = read_source_list(_list(tmp_path / "s.txt", [("fakecorpus==1.0", digest)]))

    with pytest.raises(DataError) as offline:  # the archive is in no index pip can reach
        fetch_sources(sources, cache)
    message = str(offline.value)
    assert "\n" not in message
    assert message.startswith(f"pinned corpus source fakecorpus==1.0 ({tmp_path / 's.txt'}:2) is not in {cache}")
    assert "pip could not fetch it (" in message and f"put its archive (sha256 {digest}) into {cache}" in message

    (links / wheel.name).write_bytes(wheel.read_bytes())
    [got] = fetch_sources(sources, cache)
    assert got.parent == cache and hashlib.sha256(got.read_bytes()).hexdigest() == digest
    assert [p.name for p in cache.iterdir()] == [wheel.name]  # the staging folder is gone


def test_pinned_choice_in_the_config(tmp_path):
    cfg = from_dict(RunConfig, {"data": {"kind": "default", "default_corpus": "pinned", "sources_dir": "/s"}})
    assert default_data_dir(cfg.data) == Path(cfg.data.default_dir).expanduser() / "pinned"
    with pytest.raises(
        ConfigError, match="data.sources_dir.*is only used by kind: default with default_corpus: pinned"
    ):
        from_dict(RunConfig, {"data": {"kind": "default", "sources_dir": "/s"}})
    assert DataConfig().sources_dir == DEFAULT_SOURCES_DIR


def test_project_source_list_pins_a_prose_source():
    sources = read_source_list(SOURCE_LIST)
    assert "django" in [s.name for s in sources]  # its docs/: ~6 MB of English documentation
    assert SOURCE_LIST.relative_to(SOURCE_LIST.parents[1]).as_posix() == "constraints/bench-corpus.txt"


DOCUMENTED = Path(__file__).resolve().parents[3] / "docs" / "data.md"


@pytest.mark.slow
def test_project_corpus_fingerprint_is_the_documented_one():
    """The fingerprint docs/data.md states, rebuilt from the cached archives (~10 s)."""
    cache = Path(DEFAULT_SOURCES_DIR).expanduser()
    have = (
        {hashlib.sha256(p.read_bytes()).hexdigest() for p in cache.glob("*") if p.is_file()}
        if cache.is_dir()
        else set()
    )
    missing = [s.spec for s in read_source_list() if s.sha256 not in have]
    if missing:
        pytest.skip(f"the pinned archives {missing} are not in {cache}; they need the package index (~32 MB)")
    fingerprint = build_default_corpus("pinned").fingerprint()
    assert f"`{fingerprint}`" in DOCUMENTED.read_text(), json.dumps(fingerprint)
