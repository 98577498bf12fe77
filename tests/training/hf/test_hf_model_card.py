"""The model card (README.md) every export writes: Hub front matter that parses, and a body stating
the architecture, tokenizer, growth history, data fingerprints, validation loss and IQ scores from
what the checkpoint and its run recorded, with what is missing said to be missing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import flm
from tests.training.hf.hf_helpers import flm_variant, iq_texts, random_state, write_checkpoint
from training.hf.export import export_checkpoint


def _card(out: Path):
    from huggingface_hub import ModelCard

    text = (out / "README.md").read_text()
    return ModelCard.load(out / "README.md"), text


def _row(text: str, stage: int) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {stage} | "))


def _iq_record(step_dir: Path, step: int, tokens: int) -> tuple:
    """An ``flm eval`` record of the checkpoint ``step_dir`` with the benchmark's compact summary."""
    from eval_iq.stage_eval import compact
    from eval_iq.watch import Candidate

    summary = {
        "flm_iq": {"acc": 0.25, "complete": False},
        "categories": {"rules": {"acc": 0.25, "subtasks": ["counting", "head_tail"], "complete": False}},
        "subtasks": {
            "counting": {"acc": 0.5, "n": 4, "truncated": 0},
            "head_tail": {"acc": 0.0, "n": 4, "truncated": 1},
        },
        "skipped": ["afqmc"],
    }
    cand = Candidate(step_dir, step_dir.parent.parent, step, tokens, True, 0)
    record = {"checkpoint": str(step_dir), "step": step, "tokens": tokens, "final": True}
    return cand, {**record, "iq": compact(summary, step_dir.parent.parent / "iq" / step_dir.name)}


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """A finished tiny staged run (configs/runs/tiny_staged.yaml: stage s, grown with MSG into g); its
    output_dir. Checkpoints every 2 steps, validation only at each stage's last step."""
    from bench.staged_run import write_staged_run

    root = tmp_path_factory.mktemp("card-run")
    flm("train", str(write_staged_run(root / "run.yaml", root / "out", "name=cardrun")))
    return root / "out"


@pytest.mark.slow
def test_card_of_a_trained_staged_run(staged, tmp_path):
    from eval_iq.watch import write_record
    from training.cli import main

    final = staged / "stage1-g" / "checkpoints" / "step_0000006"
    assert main(["export-hf", str(final), str(tmp_path / "hf"), "--no-tokenizer", "--license", "apache-2.0"]) == 0
    card, text = _card(tmp_path / "hf")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.license == "apache-2.0"
    assert {"flm-grow", "gpt_neox", "model-growth"} <= set(card.data.tags) and "custom_code" not in card.data.tags

    # growth history: what stages.jsonl, growth.json, transition_check.json and metrics.jsonl recorded
    stages = [json.loads(line) for line in (staged / "stages.jsonl").read_text().splitlines()]
    check = json.loads((staged / "stage1-g" / "transition_check.json").read_text())
    reference = json.loads((staged / "stage1-g" / "growth.json").read_text())["verify"]
    metrics = (staged / "stage1-g" / "metrics.jsonl").read_text().splitlines()
    val = [r["val_loss"] for r in map(json.loads, metrics) if "val_loss" in r]
    first, second = _row(text, 0), _row(text, 1)
    assert (
        f"| s | 2 layers × 64, FFN 256, 4 heads | {stages[0]['params']:,} | {stages[0]['tokens']:,} | 2 of 2 |" in first
    )
    assert "trained from scratch" in first
    assert (
        f"| g | 2 layers × 128, FFN 512, 8 heads | {stages[1]['params']:,} | {stages[1]['tokens']:,} | 6 of 6 |"
        in second
    )
    assert (
        "grown: hidden 64 → 128 (msg); ffn 256 → 512 (msg); heads 4 → 8 (msg); MSG masks ramped over 2 steps" in second
    )
    assert f"float64 reference: preserved, max abs Δlogit {reference['max_abs_dlogit']:.1e}" in second
    assert f"engine (TP1 PP1 DP1 fp32 → TP1 PP1 DP1 fp32): preserved, rel Δloss {check['rel_dloss']:.1e}" in second
    assert f"{stages[0]['tokens'] + stages[1]['tokens']:,} in all" in text
    assert f"Validation loss: **{val[-1]:.4f}** at step 6 (this checkpoint's step)" in text
    assert "seeded random tokens (`data.kind: mock`, seed 3)" in text and "No tokenizer in this directory" in text
    # not evaluated: said so, no score
    assert "IQ benchmark: no results for this checkpoint" in text and "FLM IQ" not in text

    # mid-stage checkpoint: the stage so far, and no validation at its step (none is made up)
    export_checkpoint(staged / "stage1-g" / "checkpoints" / "step_0000004", tmp_path / "hf4", no_tokenizer=True)
    card, text = _card(tmp_path / "hf4")
    assert "| 2,048 | 4 of 6 |" in _row(text, 1) and card.data.license is None
    assert "Validation loss: none recorded at or before step 4 of this stage" in text
    assert "license: not stated" in text

    # flm eval's records: the scores of the exported checkpoint, the reason of a skipped one
    write_record(*_iq_record(final, 6, 4096))
    skipped = staged / "stage0-s" / "checkpoints" / "step_0000002"
    write_record(
        _iq_record(skipped, 2, 1024)[0], {"checkpoint": str(skipped), "step": 2, "final": True, "skipped": "x"}
    )
    export_checkpoint(final, tmp_path / "hf-iq", no_tokenizer=True)
    _, text = _card(tmp_path / "hf-iq")
    assert "FLM IQ **25.0%** (partial: not every category was scored)" in text
    assert "| counting | 50.0% | 4 |" in text and "| head_tail | 0.0% | 4 |" in text
    assert "Skipped subtasks (data not available): afqmc" in text

    # the first stage's checkpoint: its history only
    export_checkpoint(skipped, tmp_path / "hf0", no_tokenizer=True)
    card, text = _card(tmp_path / "hf0")
    assert "model-growth" not in card.data.tags and "| 1 | " not in text
    assert "IQ benchmark: not scored — x." in text


def test_card_states_what_the_checkpoint_alone_records(tmp_path, sp_tokenizer):
    """A checkpoint away from its run: an FLM (xPos) export with its tokenizer and prepared data."""
    from training.data.ingest import CorpusSpec
    from training.data.prepare import prepare_dataset

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in iq_texts(5)))
    manifest = prepare_dataset(CorpusSpec(inputs=(str(corpus),)), sp_tokenizer, tmp_path / "ds", workers=1).manifest
    data = {
        "kind": "prepared",
        "datasets": [{"path": str(tmp_path / "ds"), "weight": 2.0}, {"path": str(tmp_path / "gone"), "weight": 1.0}],
        "tokenizer": str(sp_tokenizer),
    }
    cfg = flm_variant("xpos-neox-gqa-tied-bias")
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, random_state(cfg, 0), data=data, output_dir=tmp_path / "no-run")
    report = export_checkpoint(ckpt, tmp_path / "hf")
    card, text = _card(tmp_path / "hf")
    assert {"flm-grow", "flm", "custom_code"} <= set(card.data.tags) and card.data.license is None
    assert 'from_pretrained("hf", trust_remote_code=True)' in text
    assert f"The run directory recorded in the checkpoint, `{tmp_path / 'no-run'}`, was not on the exporting" in text
    assert "Trained in a single stage (no growth)." in text
    assert f"| `{tmp_path / 'ds'}` | 2 | `{manifest['fingerprint']}` | {manifest['documents']:,} |" in text
    assert f"| `{tmp_path / 'gone'}` | 1 | unknown: no `manifest.json` there" in text
    assert f"| SHA-256 | `{report.tokenizer['sha256']}` |" in text
    assert "| position encoding | xPos (RoPE base 5000, scale base 16.0) |" in text
    stored = sum(t.numel() for t in random_state(cfg, 0).values()) - 12 * cfg.hidden_size  # padded rows dropped
    assert f"| parameters | {stored:,} (stored in the safetensors files) |" in text
    assert "Validation loss: none recorded" in text and "IQ benchmark: no results" in text
    assert re.search(r"^---\n(.+\n)+---\n\n# ", text)


def test_cli_refuses_a_license_that_is_not_a_hub_identifier(tmp_path, capsys):
    from training.cli import main

    cfg = flm_variant("rmsnorm-gelu-tied")
    ckpt = write_checkpoint(tmp_path / "ckpt", cfg, random_state(cfg, 0))
    with pytest.raises(SystemExit) as info:
        main(["export-hf", str(ckpt), str(tmp_path / "hf"), "--no-tokenizer", "--license", "Apache 2.0"])
    assert (
        info.value.code == 2 and "'Apache 2.0' is not a Hugging Face Hub license identifier" in capsys.readouterr().err
    )
    assert not (tmp_path / "hf").exists()
