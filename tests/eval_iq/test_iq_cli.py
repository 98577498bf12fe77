"""``flm iq`` end to end on a tiny local Llama (offline), argparse wiring, and bad inputs."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval_iq import cli
from eval_iq.reference import PAPER_MODELS
from training.cli import main as flm_main

REPO_ROOT = Path(__file__).resolve().parents[2]


def flm(argv: list[str]) -> int:
    """``flm iq ARGV`` through the project CLI's main (its one error handler), in this process."""
    return flm_main(["iq", *argv])


def test_end_to_end_tiny_llama_offline(tiny_llama_dir, shared_data, tmp_path, no_network, capsys):
    out = tmp_path / "out"
    rc = flm(
        [
            "--model",
            "hf",
            "--model-path",
            str(tiny_llama_dir),
            "--subtasks",
            "rte,afqmc,counting,head_tail,single_supporting_fact",
            "--limit",
            "2",
            "--size",
            "6",
            "--data-dir",
            str(shared_data),
            "--skip-unavailable",
            "--output-dir",
            str(out),
            "--batch-size",
            "4",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert no_network == [], "an offline run attempted a network connection"
    results = json.loads((out / "results.json").read_text())
    assert list(results["subtasks"]) == ["rte", "counting", "head_tail", "single_supporting_fact"]
    assert "afqmc" in results["skipped"]
    rte = results["subtasks"]["rte"]
    assert rte["n"] == 2 and rte["chance"] == 0.5 and rte["instances"] == 6 and len(rte["instances_sha256"]) == 64
    assert 0.0 <= rte["acc"] <= 1.0
    assert results["categories"]["symbolic"]["complete"] is False
    assert results["flm_iq"]["acc"] is not None and results["flm_iq"]["complete"] is False
    assert results["paper_scores_percent"]["FLM-101B"]["counting"] == 69.59
    assert results["settings"]["seed"] == 1234 and results["model"]["backend"] == "hf"
    table = (out / "report.md").read_text()
    for needle in (
        "This model",
        "Chance",
        *PAPER_MODELS,
        "SuperGLUE-IQ RTE",
        "Counting",
        "69.59",
        "50.00",
        "(partial)",
        "this project's reconstruction",  # the instances are ours, beside the paper's scores
    ):
        assert needle in table, needle
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for task in (
        "flm_iq_superglue_rte",
        "flm_iq_counting",
        "flm_iq_head_tail",
        "flm_iq_single_supporting_fact",
    ):
        lines = (out / "samples" / f"{task}.jsonl").read_text().splitlines()
        assert len(lines) == 2
        rec = json.loads(lines[0])
        assert rec["prompt"] and "acc" in rec and rec["response"] is not None
    raw = json.loads((out / "lm_eval_results.json").read_text())
    assert "flm_iq_counting" in raw["results"]


def test_list_and_module_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "eval_iq.cli", "--list"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "flm_iq_superglue_boolq" in out.stdout and "two_supporting_facts" in out.stdout


def test_register_sets_handler():
    parser = argparse.ArgumentParser(prog="flm")
    sub = parser.add_subparsers(dest="command")
    iq = cli.register(sub)
    assert iq.prog.endswith("iq")
    args = parser.parse_args(["iq", "--subtasks", "rules", "--seed", "7"])
    assert args.func is cli.run and args.subtasks == "rules" and args.seed == 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--subtasks", "counting,nope"], r"unknown IQ subtask\(s\): 'nope'"),
        (["--subtasks", "counting"], r"--model hf needs --model-path"),
        (
            ["--subtasks", "counting", "--model-path", "/nonexistent/model"],
            r"model directory not found: /nonexistent/model",
        ),
        (["--subtasks", "counting", "--model", "flm"], r"--model flm needs --checkpoint"),
        (
            ["--subtasks", "boolq", "--data-dir", "/nonexistent/data"],
            r"--data-dir not found: /nonexistent/data",
        ),
        (["--subtasks", "counting", "--limit", "0"], r"--limit must be >= 1"),
    ],
)
def test_bad_inputs_exit_2_with_clear_message(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("FLM_IQ_DATA_DIR", raising=False)
    assert flm(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("flm iq: error: ")
    import re

    assert re.search(message, err), err


def test_symbolic_offline_without_data_is_clear(capsys, monkeypatch):
    monkeypatch.delenv("FLM_IQ_DATA_DIR", raising=False)
    assert flm(["--subtasks", "boolq,counting", "--model-path", "/x"]) == 2
    err = capsys.readouterr().err
    assert "boolq needs --data-dir" in err and "--skip-unavailable" in err


def test_malformed_data_file_is_reported(tmp_path, capsys):
    d = tmp_path / "data" / "superglue" / "RTE"
    d.mkdir(parents=True)
    (d / "val.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n[oops\n')
    (d / "train.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n')
    assert flm(["--subtasks", "rte", "--data-dir", str(tmp_path / "data"), "--model-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "RTE/val.jsonl: cannot be read as JSON lines" in err


def test_offline_mode_reaches_already_imported_libraries(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from eval_iq.offline import enable_offline_mode, is_offline

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert not is_offline()
    enable_offline_mode()
    assert is_offline()
    assert huggingface_hub.constants.is_offline_mode() and datasets.config.HF_HUB_OFFLINE
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(OfflineModeIsEnabled):
        HfApi().model_info("gpt2")


@pytest.mark.slow
def test_flm_iq_and_lm_eval_print_the_same_flm_iq(tiny_llama_dir, iq_data_dir, tmp_path, no_network):
    """The same model and instances through `flm iq` and through lm-eval's `flm_iq` group; the `flm iq`
    run is also the offline end-to-end run of all 17 subtasks (no network connection attempted)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from eval_iq.yaml_tasks import TASKS_DIR

    out = tmp_path / "out"
    args = [
        "--model-path",
        str(tiny_llama_dir),
        "--limit",
        "2",
        "--size",
        "4",
        "--data-dir",
        str(iq_data_dir),
        "--output-dir",
        str(out),
    ]
    assert flm(args) == 0 and no_network == []
    ours = json.loads((out / "results.json").read_text())
    assert len(ours["subtasks"]) == 17 and ours["flm_iq"]["complete"] is True
    lm = HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=8, dtype="float32")
    tm = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"iq_size": 4, "iq_data_dir": str(iq_data_dir)}
    )
    theirs = simple_evaluate(model=lm, tasks=["flm_iq"], task_manager=tm, limit=2, bootstrap_iters=0)
    for name, sub in ours["subtasks"].items():
        assert theirs["results"][sub["task"]]["acc,none"] == sub["acc"], name
    for cat, c in ours["categories"].items():
        assert theirs["groups"][f"flm_iq_{cat}"]["acc,none"] == pytest.approx(c["acc"]), cat
    assert ours["flm_iq"]["complete"] is True
    assert theirs["groups"]["flm_iq"]["acc,none"] == pytest.approx(ours["flm_iq"]["acc"])
    leaf_mean = sum(s["acc"] for s in ours["subtasks"].values()) / len(ours["subtasks"])
    assert ours["flm_iq"]["acc"] != pytest.approx(leaf_mean)  # the comparison tells the two apart
