"""A staged run whose second stage changes the blend, end to end through ``flm train`` (slow): the
grown checkpoint and every checkpoint of the stage record the position the design says (the new
blend's order from the stage's first sample, the first dataset continuing at its cursor), and a run
killed inside the stage resumes to the loss the killed run had at the step it re-trains. The order itself is tested
in process (test_data_position.py); packed windows are read with ``data.reset_at_eos`` here."""

from __future__ import annotations

import json

import pytest

from bench.staged_run import write_staged_run
from tests.helpers import flm, read_metrics
from tests.training.data.data_helpers import make_documents, write_jsonl
from training.data.ingest import CorpusSpec
from training.data.prepare import prepare_dataset
from training.data.shards import PreparedDataset


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory, corpus_file, tokenizer_dir):
    root = tmp_path_factory.mktemp("blend")
    other = write_jsonl(root / "other.jsonl", make_documents(200, seed=2))
    out = []
    for name, corpus in (("a", corpus_file), ("b", other)):
        prepare_dataset(CorpusSpec(inputs=(str(corpus),)), tokenizer_dir, root / name, workers=1)
        out.append(root / name)
    return out


def write_run(tmp_path, name, a, b):
    return write_staged_run(
        tmp_path / f"{name}.yaml",
        tmp_path / name,
        "name=blend",
        f"data={{kind: prepared, seed: 3, validation_fraction: 0.05, reset_at_eos: true, datasets: [{{path: {a}}}]}}",
        "stages.0.model.vocab_size=400",
        "stages.1.model.vocab_size=400",
        f"stages.1.data={{datasets: [{{path: {a}, weight: 1}}, {{path: {b}, weight: 1}}]}}",
    )


def position(checkpoint) -> dict:
    return json.loads((checkpoint / "flm_checkpoint.json").read_text())["data_position"]


@pytest.mark.slow
def test_a_stage_with_its_own_blend_carries_the_position_and_resumes_exactly(tmp_path, two_datasets):
    a, b = (PreparedDataset(p).fingerprint for p in two_datasets)
    run = write_run(tmp_path, "run", *two_datasets)
    # killed after stage 1's step 3 (its checkpoint: step 2), then resumed
    bad = flm("train", str(run), check=False, env={"FLM_FAULT_AT": "blend/g:3"})
    stage0, stage1 = tmp_path / "run" / "stage0-s", tmp_path / "run" / "stage1-g"
    assert bad.returncode != 0 and (stage1 / "checkpoints" / "step_0000002").is_dir(), bad.stderr[-3000:]
    killed = {r["step"]: r["loss"] for r in read_metrics(stage1)}
    flm("train", str(run), "--resume")
    assert position(stage0 / "checkpoints" / "step_0000002")["blend"]["keys"] == [a]
    # stage 0 trained 2 steps of 8 samples, all of dataset a: the grown checkpoint carries that
    # position; stage 1's blend starts at sample 16, a's cursor at 16, b at its first sample
    entered = {"origin": 16, "cursors": {a: 16}}
    assert {k: position(stage1 / "grown")[k] for k in entered} == {"origin": 0, "cursors": {}}
    for step in (2, 4, 6):
        recorded = position(stage1 / "checkpoints" / f"step_{step:07d}")
        assert {k: recorded[k] for k in entered} == entered and recorded["blend"]["keys"] == [a, b]
    # step 3 trained twice: on from the grown checkpoint's position, and resumed from step 2's
    resumed = {r["step"]: r["loss"] for r in read_metrics(stage1)}
    assert sorted(killed) == [1, 2, 3] and sorted(resumed) == list(range(1, 7))
    assert resumed[3] == pytest.approx(killed[3], rel=1e-6)
