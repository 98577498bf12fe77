"""Prompt length: truncation a model applied is counted per subtask, recorded in results and the
report, and warned about; long-text datasets keep their prompts within the estimated budget."""

from __future__ import annotations

import logging

import pytest

from eval_iq.generate import generate
from eval_iq.prompt_budget import PROMPT_TOKEN_BUDGET, estimate_tokens
from eval_iq.registry import SUBTASKS, resolve_subtasks


def _benchmark(lm, names, data_dir=None, size=6):
    from eval_iq.runner import Plan, RunSettings, benchmark

    settings = RunSettings(size=size, data_dir=data_dir)
    specs = resolve_subtasks(names)
    return benchmark(lm, Plan(specs), settings, {"name": "tiny"}, {"size": size})


def test_truncation_is_recorded_per_subtask_and_warned(tiny_llama_dir, shared_data, caplog):
    from eval_iq.adapter import BackendLM, HFBackend
    from eval_iq.report import markdown_table

    backend = HFBackend.from_pretrained(tiny_llama_dir)
    backend.max_length = 160  # a short context: some prompts do not fit
    lm = BackendLM(backend, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="eval_iq.truncation"):
        summary, _ = _benchmark(lm, "counting,head_tail,rte", shared_data)
    tok = backend.tokenizer
    expected = {}
    for name in ("counting", "head_tail"):  # generation: context limit = max_length - max_gen_toks
        keep = 160 - SUBTASKS[name].max_gen_toks
        expected[name] = sum(len(tok.encode(i["prompt"])) > keep for i in generate(name, size=6))
    # multiple choice: context + " symbol" must fit max_length + 1
    expected["rte"] = sum(
        any(len(tok.encode(i["prompt"] + " " + c)) > 161 for c in i["choices"])
        for i in generate("rte", size=6, data_dir=shared_data)
    )
    got = {n: summary["subtasks"][n]["truncated"] for n in expected}
    assert got == expected
    assert expected["rte"] == 6 and expected["counting"] == 0  # both cases are exercised
    assert summary["model"]["max_length"] == 160
    assert summary["subtasks"]["rte"]["truncation"] == {
        "truncated": 6,
        "n": 6,
        "limit": 161,
        "max_tokens": summary["subtasks"]["rte"]["truncation"]["max_tokens"],
    }
    warned = [r.getMessage() for r in caplog.records if "left-truncated" in r.getMessage()]
    assert any("flm_iq_superglue_rte: 6 of 6 prompts" in w for w in warned)
    assert not any("flm_iq_counting" in w for w in warned)
    table = markdown_table(summary)
    assert "Truncated" in table and "Warning: truncated prompts" in table and "SuperGLUE-IQ RTE: 6 of 6" in table


def test_no_truncation_recorded_with_a_long_context(tiny_llama_dir):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=4, dtype="float32")
    summary, _ = _benchmark(lm, "counting", size=3)
    assert summary["subtasks"]["counting"]["truncated"] == 0
    assert summary["subtasks"]["counting"]["truncation"]["n"] == 3


@pytest.mark.parametrize("name", [n for n, s in SUBTASKS.items() if s.category == "symbolic" and n != "afqmc"])
def test_symbolic_prompts_stay_within_the_budget(name, shared_data):
    """Demonstrations of long-text datasets are bounded: every prompt fits the estimated budget
    (CSL: 148 of 160 prompts exceeded 2048 tokens of a 49k-piece tokenizer in harness 1.0)."""
    instances = generate(name, data_dir=shared_data)
    worst = max(estimate_tokens(i["prompt"]) for i in instances)
    assert worst <= PROMPT_TOKEN_BUDGET, worst


def test_budget_prefers_short_demonstrations_over_dropping_them(shared_data):
    insts = generate("csl", data_dir=shared_data)
    for inst in insts:
        assert inst["prompt"].count("答案： ") == 4  # 2 per label, none dropped


def test_estimate_counts_cjk_higher_than_ascii():
    assert estimate_tokens("abcdef") == 2 and estimate_tokens("摘要") == 4 and estimate_tokens("") == 0
