"""IQ during growth runs: the ``iq_eval`` run-config section, the benchmark on a stage's final
checkpoint (recorded per stage, never stopping training), and the dry-run report's per-stage table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.staged_run import write_staged_run
from eval_iq.stage_eval import evaluate_checkpoint, evaluate_stage, stages_markdown

REPO_ROOT = Path(__file__).resolve().parents[2]

#: configs/runs/tiny_staged.yaml on the default corpus (its tokenizer's 2048 ids), grown in depth, with IQ
RUN = (
    "name=iqs",
    "data={kind: default, seed: 1234}",
    "train.global_batch_size=4",
    "checkpoint={}",
    "iq_eval={tasks: [counting, head_tail, single_supporting_fact], limit: 2}",
    "stages.0.model.vocab_size=2048",
    "stages.0.model.seq_length=128",
    "stages.1.model={num_layers: 4, hidden_size: 64, ffn_hidden_size: 256, num_attention_heads: 4, vocab_size: 2048, "
    "seq_length: 128}",
    "stages.1.tokens=1024",
)


def _write_run(tmp_path: Path) -> Path:
    return write_staged_run(tmp_path / "run.yaml", tmp_path / "out", *RUN)


def test_iq_eval_section_is_parsed_and_checked(tmp_path):
    from eval_iq.stage_eval import stage_end_iq
    from training.config import load_run_config
    from training.config_base import ConfigError

    run = _write_run(tmp_path)
    cfg = load_run_config(run)
    assert cfg.iq_eval.tasks == ["counting", "head_tail", "single_supporting_fact"] and cfg.iq_eval.limit == 2
    assert load_run_config(run, ["iq_eval=null"]).iq_eval is None
    with pytest.raises(ConfigError) as info:  # the names are checked by the benchmark's stage hook
        stage_end_iq.check(load_run_config(run, ["iq_eval.tasks=[counting, countin]"]))
    assert info.value.key == "iq_eval.tasks" and "'countin'" in str(info.value) and "Valid: 'all'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_run_config(run, ["iq_eval.limit=0"])
    assert info.value.key == "iq_eval.limit" and "must be >= 1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_run_config(run, ["stages=[]"])
    assert info.value.key == "iq_eval" and "flm iq --model flm" in str(info.value)


def test_evaluate_checkpoint_writes_outputs_and_a_compact_record(tiny_llama_dir, tmp_path, shared_data):
    from eval_iq.adapter import HFBackend

    backend = HFBackend.from_pretrained(tiny_llama_dir)
    rec = evaluate_checkpoint(
        tmp_path / "ckpt" / "step_1", tmp_path / "iq", "rules,afqmc,rte", limit=2, data_dir=shared_data, backend=backend
    )
    results = json.loads((tmp_path / "iq" / "results.json").read_text())
    assert (tmp_path / "iq" / "report.png").is_file() and (tmp_path / "iq" / "report.md").is_file()
    assert rec["subtasks"] == {n: s["acc"] for n, s in results["subtasks"].items()}
    assert set(rec["subtasks"]) == {"counting", "replace_lowercase", "replace_word", "rte"}
    assert rec["skipped"] == ["afqmc"] and "symbolic" in rec["partial_categories"]  # missing data: skipped
    assert rec["n"] == {n: 2 for n in rec["subtasks"]} and rec["truncated"]["counting"] == 0
    assert rec["categories"]["rules"] == pytest.approx(results["categories"]["rules"]["acc"])
    assert rec["flm_iq"] is None and rec["complete"] is False


def test_evaluate_stage_records_problems_instead_of_raising(tmp_path, caplog):
    assert evaluate_stage(None, tmp_path) == {"error": "the stage has no final checkpoint to evaluate"}
    rec = evaluate_stage(tmp_path / "missing", tmp_path / "iq", tasks="counting", limit=1)
    assert rec["error"].startswith("BackendUnavailableError: checkpoint directory not found")
    assert "IQ evaluation of" in caplog.text


def test_stages_markdown_shows_each_stage():
    rec = {
        "flm_iq": None,
        "complete": False,
        "categories": {"rules": 0.25},
        "partial_categories": ["rules"],
        "subtasks": {"counting": 0.5, "replace_word": 0.0},
        "n": {"counting": 2, "replace_word": 2},
        "truncated": {"counting": 0, "replace_word": 1},
        "skipped": [],
        "output_dir": "x",
    }
    later = dict(rec, subtasks={"counting": 1.0, "replace_word": 0.5}, categories={"rules": 0.75})
    table = stages_markdown([("0 small", rec), ("1 medium", later), ("2 large", {"error": "boom"}), ("3 x", None)])
    lines = table.splitlines()
    assert lines[0].startswith("| stage | FLM IQ | Rule understanding | Counting | Replace-Word | n | truncated |")
    assert lines[2] == "| 0 small | – (partial) | 25.0 (partial) | 50.0 | 0.0 | 2 | 1 |"
    assert lines[3].startswith("| 1 medium | – (partial) | 75.0 (partial) | 100.0 | 50.0 |")
    assert lines[4].startswith("| 2 large | not evaluated: boom |") and "3 x" not in table
    assert stages_markdown([("0", None)]) == ""


@pytest.mark.slow
def test_staged_run_evaluates_iq_at_every_stage_and_the_report_shows_it(tmp_path):
    """A 2-stage growth run (default corpus and its tokenizer) with iq_eval: each stage's final
    checkpoint is evaluated, stages.jsonl records the scores, the dry-run report tabulates them."""
    run = _write_run(tmp_path)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "train", str(run)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "stages.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == [0, 1]
    for r, stage_dir in zip(records, ("stage0-s", "stage1-g")):
        iq = r["iq"]
        assert "error" not in iq, iq
        assert set(iq["subtasks"]) == {"counting", "head_tail", "single_supporting_fact"}
        assert iq["n"] == {n: 2 for n in iq["subtasks"]}
        assert iq["truncated"]["single_supporting_fact"] == 2  # seq_length 128: recorded, not hidden
        results = json.loads((tmp_path / "out" / stage_dir / "iq" / "results.json").read_text())
        assert results["model"]["max_length"] == 128
        assert {n: s["acc"] for n, s in results["subtasks"].items()} == iq["subtasks"]
    assert "left-truncated" in proc.stderr
    from training.config import load_run_config
    from training.dryrun import write_report

    report = write_report(load_run_config(run))
    table = (report / "stages.md").read_text()
    assert "## IQ benchmark at the end of each stage" in table
    assert "| 0 s | – (partial) |" in table and "| 1 g | – (partial) |" in table and "Single Supporting Fact" in table
