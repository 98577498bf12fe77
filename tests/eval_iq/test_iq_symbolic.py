"""Symbolic mapping: symbols only, class-balanced interleaved demonstrations, gold answers
checked against the raw dataset files by an independent reader; data errors are clear."""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path

import pytest

from eval_iq.errors import DataNotFoundError, MalformedDataError
from eval_iq.generate import generate
from eval_iq.registry import SUBTASKS

SYMBOLIC = [n for n, s in SUBTASKS.items() if s.category == "symbolic"]
RAW_FILES = {
    "boolq": ("superglue/BoolQ", ("val.jsonl", "train.jsonl")),
    "wic": ("superglue/WiC", ("val.jsonl", "train.jsonl")),
    "rte": ("superglue/RTE", ("val.jsonl", "train.jsonl")),
    "wsc": ("superglue/WSC", ("val.jsonl", "train.jsonl")),
    "afqmc": ("clue/afqmc", ("dev.json", "train.json")),
    "csl": ("clue/csl", ("dev_few_all.json", "train_few_all.json")),
    "ocnli": ("clue/ocnli", ("dev_few_all.json", "train_few_all.json")),
    "cluewsc": ("clue/cluewsc", ("dev_few_all.json", "train_few_all.json")),
    "bustm": ("clue/bustm", ("dev_few_all.json", "train_few_all.json")),
}
LABEL_WORDS = {
    "true",
    "false",
    "yes",
    "no",
    "entailment",
    "not_entailment",
    "neutral",
    "contradiction",
    "0",
    "1",
}


def prefix(name: str) -> str:
    return "Answer:" if SUBTASKS[name].family == "superglue" else "答案："


def raw_key(name: str, r: dict) -> tuple:
    """What identifies a record, computed from the raw JSON (independent of the generator)."""
    t = r.get("target", r)
    return {
        "boolq": lambda: (r["passage"].strip(), r["question"].strip().rstrip("?")),
        "wic": lambda: (r["sentence1"], r["sentence2"], r["word"]),
        "rte": lambda: (r["premise"], r["hypothesis"]),
        "wsc": lambda: (" ".join(r["text"].split()), t["span2_text"], t["span1_text"], t["span2_index"]),
        "cluewsc": lambda: (r["text"], t["span2_text"], t["span1_text"], t["span2_index"]),
        "csl": lambda: (r["abst"], "，".join(r["keyword"])),
    }.get(name, lambda: (r["sentence1"], r["sentence2"]))()


def block_key(name: str, block: str) -> tuple:
    """The same identity, read back from a prompt block."""
    pats = {
        "boolq": r"Passage: (.*)\nQuestion: (.*?)\?",
        "wic": r"Sentence 1: (.*)\nSentence 2: (.*)\n"
        r"Question: Is the word \"(.*)\" used with the same meaning in both sentences\?",
        "rte": r"Premise: (.*)\nHypothesis: (.*)",
        "wsc": r"Passage: (.*)\nQuestion: In the passage above, does the pronoun "
        r"\"\*(.*)\*\" refer to \"(.*)\"\?",
        "cluewsc": r"(.*)\n问题：“\*(.*)\*”指的是“(.*)”吗？",
        "csl": r"摘要：(.*)\n关键词：(.*)",
    }
    pat = pats.get(name, r"(?:句子一|前提)：(.*)\n(?:句子二|假设)：(.*)")
    body = block.rsplit("\n", 1)[0]
    m = re.fullmatch(pat, body, flags=re.S)
    assert m, f"cannot parse block of {name}: {body[:200]!r}"
    groups = tuple(g.strip() if name == "boolq" else g for g in m.groups())
    if name == "wsc":  # the pronoun is marked *like this*; its word position identifies the record
        words = groups[0].split()
        pos = next(i for i, w in enumerate(words) if w.startswith("*"))
        return (groups[0].replace("*", ""), *groups[1:], pos)
    if name == "cluewsc":
        return (groups[0].replace("*", ""), *groups[1:], groups[0].index("*"))
    return groups


def lookup(labels: dict[tuple, set[str]], name: str, key: tuple) -> set[str]:
    """Exact key; for WSC also the pronoun index +-2 (one FewGLUE record is off by one)."""
    if key in labels or name != "wsc":
        return labels.get(key, set())
    near = [labels[k] for d in (1, -1, 2, -2) if (k := (*key[:-1], key[-1] + d)) in labels]
    return near[0] if len(near) == 1 else set()


def raw_labels(name: str, root: Path) -> dict[tuple, set[str]]:
    folder, files = RAW_FILES[name]
    labels: dict[tuple, set[str]] = {}
    for f in files:
        for line in (root / folder / f).read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                lab = str(r["label"]).lower()
                labels.setdefault(raw_key(name, r), set()).add(lab)
    return labels


@pytest.mark.parametrize("name", SYMBOLIC)
def test_symbolic_instances(name, iq_data_dir):
    instances = generate(name, data_dir=iq_data_dir)
    spec = SUBTASKS[name]
    labels = raw_labels(name, iq_data_dir)
    # labelled validation records, copies of the same record counted once (the data repeats some)
    valid_labels: dict[tuple, set[str]] = {}
    for line in (iq_data_dir / RAW_FILES[name][0] / RAW_FILES[name][1][0]).read_text("utf-8").splitlines():
        if line.strip() and str((r := json.loads(line))["label"]).lower() not in {"-", ""}:
            valid_labels.setdefault(raw_key(name, r), set()).add(str(r["label"]).lower())
    n_valid = sum(len(v) == 1 for v in valid_labels.values())
    assert len(instances) == min(300, n_valid)
    symbols = instances[0]["choices"]
    k = len(symbols)
    assert k == round(1 / spec.chance)
    # symbols: punctuation only, 2-3 characters, distinct, none a prefix of another, never a word
    for s in symbols:
        assert 2 <= len(s) <= 3 and all(c in string.punctuation for c in s)
    assert len(set(symbols)) == k
    assert not any(a != b and b.startswith(a) for a in symbols for b in symbols)
    verified = 0
    for inst in instances:
        assert inst["choices"] == symbols
        assert inst["answer"] == symbols[inst["gold"]]
        blocks = inst["prompt"].split("\n\n")
        demos, query = blocks[:-1], blocks[-1]
        assert query.endswith("\n" + prefix(name))
        assert not any(s in query for s in symbols), "the query must not contain a label symbol"
        shown = [d.rsplit("\n", 1)[1][len(prefix(name)) + 1 :] for d in demos]
        assert all(s in symbols for s in shown), "answer slots hold symbols only"
        assert not LABEL_WORDS & {
            line.split(" ", 1)[-1].lower() for line in inst["prompt"].split("\n") if line.startswith(prefix(name))
        }
        counts = Counter(shown)
        assert set(counts) == set(symbols) and set(counts.values()) == {spec.default_shots}, "class-balanced"
        assert all(a != b for a, b in zip(shown, shown[1:])), "interleaved: no label twice in a row"
        assert all(d.rsplit("\n", 1)[0] != query.rsplit("\n", 1)[0] for d in demos), "query is not its own shot"
        # independent check of the gold answer: recover label->symbol from the demonstrations'
        # raw labels and map the query's raw label through it
        mapping: dict[str, set[str]] = {}
        ambiguous = False
        for d, sym in zip(demos, shown):
            lab = lookup(labels, name, block_key(name, d))
            if len(lab) != 1:
                ambiguous = True
                break
            mapping.setdefault(next(iter(lab)), set()).add(sym)
        qlab = lookup(labels, name, block_key(name, query))
        if ambiguous or len(qlab) != 1:
            continue
        assert all(len(v) == 1 for v in mapping.values()), "one symbol per label within an instance"
        assert mapping[next(iter(qlab))] == {inst["answer"]}
        verified += 1
    assert verified >= 0.95 * len(instances)
    # balanced gold schedule: a constant symbol is right 1/K of the time
    gold = Counter(inst["gold"] for inst in instances)
    assert max(gold.values()) - min(gold.values()) <= 1


def test_symbol_mapping_varies_per_instance(shared_data):
    mappings = {
        json.dumps(json.loads(i["meta"])["mapping"], sort_keys=True)
        for i in generate("rte", size=40, data_dir=shared_data)
    }
    assert len(mappings) == 2


def test_shots_option_and_wsc_fallback(shared_data):
    # FewGLUE's WSC train split has only "true" records: "false" shots come from validation
    for shots in (0, 1, 3):
        for inst in generate("wsc", size=20, shots=shots, data_dir=shared_data):
            assert len(inst["prompt"].split("\n\n")) == 2 * shots + 1


def test_env_var_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("FLM_IQ_DATA_DIR", str(shared_data))
    assert generate("rte", size=3) == generate("rte", size=3, data_dir=shared_data)


def test_offline_without_data_dir_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("FLM_IQ_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="offline.*--data-dir"):
        generate("boolq", size=2)


def test_missing_data(tmp_path, shared_data):
    with pytest.raises(DataNotFoundError, match="data directory not found"):
        generate("boolq", data_dir=tmp_path / "nope")
    with pytest.raises(DataNotFoundError, match=r"afqmc: no eval file.*clue/afqmc/dev\.json"):
        generate("afqmc", data_dir=shared_data)


def _copy_rte(tmp_path: Path, shared_data: Path, val_text: str) -> Path:
    d = tmp_path / "data" / "superglue" / "RTE"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_bytes((shared_data / "superglue/RTE/train.jsonl").read_bytes())
    (d / "val.jsonl").write_text(val_text, encoding="utf-8")
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("val_text", "message"),
    [
        (
            '{"premise": "a", "hypothesis": "b", "label": "entailment"}\n{not json\n',
            r"val\.jsonl: cannot be read as JSON lines",
        ),
        ('{"premise": "a", "label": "entailment"}\n', r"val\.jsonl: record 0 lacks field 'hypothesis'"),
        (
            '{"premise": "a", "hypothesis": "b", "label": "maybe"}\n',
            r"label 'maybe'; rte labels are entailment, not_entailment",
        ),
        ('{"premise": "a", "hypothesis": "b"}\n', r"record 0 has no 'label' field"),
    ],
)
def test_malformed_dataset_file(tmp_path, shared_data, val_text, message):
    root = _copy_rte(tmp_path, shared_data, val_text)
    with pytest.raises(MalformedDataError, match=message):
        generate("rte", data_dir=root)


def test_hub_style_records_are_normalised():
    """Hub copies store labels as ClassLabel ids and WSC spans as top-level fields."""
    from eval_iq.symbolic_data import SOURCES, normalise_records

    rows = [
        {"sentence1": "a", "sentence2": "b", "label": 2, "idx": 0},
        {"sentence1": "c", "sentence2": "d", "label": -1, "idx": 1},
    ]
    recs, dropped = normalise_records(SOURCES["ocnli"], rows, ["neutral", "entailment", "contradiction"], "hub")
    assert [r["label"] for r in recs] == ["contradiction"] and dropped == 1
    wsc = {
        "text": "Mark told Pete he was late .",
        "span1_index": 0,
        "span2_index": 3,
        "span1_text": "Mark",
        "span2_text": "he",
        "label": 1,
        "idx": 0,
    }
    (rec,), _ = normalise_records(SOURCES["wsc"], [wsc], ["False", "True"], "hub")
    assert rec["label"] == "true"
    assert "Mark told Pete *he* was late ." in SOURCES["wsc"].render(rec)
