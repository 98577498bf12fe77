"""flm data ...: the three commands end to end, and exit status 2 with a one-line error."""

from __future__ import annotations

import argparse

import pytest

from tests.training.data.data_helpers import make_documents, write_jsonl
from training.cli import main as flm_main
from training.orchestration import data_cli as cli


def run(argv: list[str]) -> int:
    """``flm ARGV`` through the project CLI's main (its one error handler), in this process."""
    return flm_main(argv)


def test_register_adds_data_commands():
    parser = argparse.ArgumentParser(prog="flm")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "prepare", "x.jsonl", "--tokenizer", "t", "--out", "o"])
    assert callable(args.func) and args.workers == 2 and args.inputs == ["x.jsonl"]
    with pytest.raises(SystemExit):
        parser.parse_args(["data"])


def test_tokenizer_then_prepare(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(120, seed=8), field="body")
    tok = tmp_path / "tok"
    assert (
        run(
            [
                "data",
                "tokenizer",
                str(corpus),
                "--text-field",
                "body",
                "--vocab-size",
                "300",
                "--out",
                str(tok),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert "trained; vocab_size=300" in capsys.readouterr().out
    assert (
        run(["data", "tokenizer", str(corpus), "--text-field", "body", "--vocab-size", "300", "--out", str(tok)]) == 0
    )
    assert "up to date" in capsys.readouterr().out
    out = tmp_path / "ds"
    assert (
        run(
            [
                "data",
                "prepare",
                str(tmp_path / "*.jsonl"),
                "--text-field",
                "body",
                "--tokenizer",
                str(tok),
                "--out",
                str(out),
                "--workers",
                "2",
            ]
        )
        == 0
    )
    assert "prepared; documents=120" in capsys.readouterr().out
    assert (
        run(["data", "prepare", str(corpus), "--text-field", "body", "--tokenizer", str(tok), "--out", str(out)]) == 0
    )
    assert "up to date" in capsys.readouterr().out


def test_tokenizer_vocab_from_run_config(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_documents(120, seed=8))
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("model:\n  vocab_size: 320\n")
    assert (
        run(
            [
                "data",
                "tokenizer",
                str(corpus),
                "--config",
                str(run_yaml),
                "--out",
                str(tmp_path / "t"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert "vocab_size=320" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (
            ["data", "prepare", "{tmp}/missing.jsonl", "--tokenizer", "{tmp}/tok", "--out", "{tmp}/o"],
            ["tokenizer not found"],
        ),
        (
            ["data", "tokenizer", "{tmp}/missing.jsonl", "--vocab-size", "300", "--out", "{tmp}/t"],
            ["input file not found", "missing.jsonl"],
        ),
        (
            ["data", "tokenizer", "{tmp}/c.jsonl", "--vocab-size", "100", "--out", "{tmp}/t"],
            ["vocab_size 100 is too small", "special tokens"],
        ),
        (["data", "tokenizer", "{tmp}/c.jsonl", "--out", "{tmp}/t"], ["--vocab-size"]),
        (["data", "tokenizer", "--vocab-size", "300", "--out", "{tmp}/t"], ["no corpus given"]),
    ],
)
def test_errors_exit_2_with_message(tmp_path, capsys, argv, fragments):
    write_jsonl(tmp_path / "c.jsonl", ["some text"])
    code = run([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("flm data: error: ") and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err


def test_default_corpus_command(tmp_path, capsys):
    assert run(["data", "default-corpus", "--out", str(tmp_path / "dc")]) == 0
    assert "written; documents=" in capsys.readouterr().out
    assert (tmp_path / "dc" / "corpus.jsonl").is_file() and (tmp_path / "dc" / "manifest.json").is_file()
