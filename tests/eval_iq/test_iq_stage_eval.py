"""IQ during growth runs: the ``iq_eval`` run-config section, ``flm eval`` scoring a run's checkpoints
outside the training job (each in its own process; a damaged checkpoint skipped, never scored), and
the dry-run report's per-stage table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.staged_run import write_staged_run
from eval_iq.stage_eval import evaluate_checkpoint, stages_markdown
from tests.helpers import flm

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
    from eval_iq.stage_eval import check_iq_eval
    from training.config import load_run_config
    from training.config_base import ConfigError
    from training.orchestration.stage_plans import load_run

    run = _write_run(tmp_path)
    cfg = load_run_config(run)
    assert cfg.iq_eval.tasks == ["counting", "head_tail", "single_supporting_fact"] and cfg.iq_eval.limit == 2
    assert load_run_config(run, ["iq_eval=null"]).iq_eval is None
    with pytest.raises(ConfigError) as info:  # the names are checked by the benchmark's stage hook
        check_iq_eval(load_run(run, ["iq_eval.tasks=[counting, countin]"]))
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


def test_flm_eval_refuses_a_missing_run_directory(tmp_path):
    out = flm("eval", str(tmp_path / "nope"), check=False)
    assert out.returncode == 2 and "run directory" in out.stderr and "does not exist" in out.stderr


def test_flm_eval_skips_a_model_too_large_for_one_host_before_reading_it(tmp_path):
    """The project backend holds the whole model in one host's RAM: a checkpoint above --max-params is
    recorded as skipped with the way to evaluate it, before its files are read (here there are none)."""
    from eval_iq.watch import Candidate, EvalOptions, evaluate_candidate

    big = Candidate(tmp_path, tmp_path, step=5, tokens=640, final=True, params=102_800_000_000)
    record = evaluate_candidate(big, EvalOptions("counting", None, None, 60.0, max_params=8e9))
    assert record is not None and "iq" not in record
    assert "above --max-params" in record["skipped"] and "flm iq --model hf --parallelize" in record["skipped"]


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
def test_checkpoints_are_scored_outside_the_training_job_and_the_report_shows_them(tmp_path):
    """A 2-stage growth run (default corpus and its tokenizer) with iq_eval: the training job records
    the section and evaluates nothing; `flm eval --watch --final-only` (the run is over, so it returns)
    scores each stage's final checkpoint in its own process, writes eval.jsonl (keyed by tokens),
    the flm iq outputs and TensorBoard scalars beside the stage's metrics, skips a damaged checkpoint
    in one line; the dry-run report tabulates the scores."""
    import shutil

    from training.apps.dryrun import write_report
    from training.orchestration.stage_plans import load_run

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
    assert "flm eval" in proc.stderr and "--watch" in proc.stderr  # the one-line note, nothing evaluated here
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == [0, 1] and not any("iq" in r for r in records)
    assert json.loads((out / "iq_eval.json").read_text())["limit"] == 2
    assert not list(out.glob("stage*/eval.jsonl"))
    # a damaged copy of stage 0's final checkpoint: reported and skipped, never scored
    final0 = out / "stage0-s" / "checkpoints" / "step_0000002"
    damaged = final0.parent / "step_0000001"
    shutil.copytree(final0, damaged)
    victim = next(p for p in sorted(damaged.rglob("*.distcp")))
    victim.write_bytes(b"\0" * victim.stat().st_size)
    ev = flm("eval", str(out), "--watch", "--interval", "1", "--final-only")
    assert f"skipped {damaged}" in ev.stderr and "verification failed" in ev.stderr
    for stage_dir in ("stage0-s", "stage1-g"):
        recs = [json.loads(line) for line in (out / stage_dir / "eval.jsonl").read_text().splitlines()]
        scored = [r for r in recs if "iq" in r]
        assert len(scored) == 1 and scored[0]["final"] and scored[0]["tokens"] == 1024 * (1 + (stage_dir == "stage1-g"))
        iq = scored[0]["iq"]
        assert set(iq["subtasks"]) == {"counting", "head_tail", "single_supporting_fact"}
        assert iq["n"] == {n: 2 for n in iq["subtasks"]}
        assert iq["truncated"]["single_supporting_fact"] == 2  # seq_length 128: recorded, not hidden
        results = json.loads((out / stage_dir / "iq" / "step_0000002" / "results.json").read_text())
        assert results["model"]["max_length"] == 128
        assert {n: s["acc"] for n, s in results["subtasks"].items()} == iq["subtasks"]
        assert list((out / stage_dir / "tensorboard").glob("events.out.tfevents.*"))
    skipped = [json.loads(line) for line in (out / "stage0-s" / "eval.jsonl").read_text().splitlines()]
    assert [r["checkpoint"] for r in skipped if "skipped" in r] == [str(damaged)]
    again = flm("eval", str(out), "--final-only")  # everything is recorded: nothing is evaluated twice
    assert "evaluated 0 checkpoint(s)" in again.stderr
    report = write_report(load_run(run))
    table = (report / "stages.md").read_text()
    assert "## IQ benchmark at the end of each stage" in table
