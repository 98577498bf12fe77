"""The checkpoint adapter (BackendLM over a CausalLMBackend) against lm-eval's ``hf`` backend
and against log-probabilities computed directly with torch, on the same tiny Llama weights."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from eval_iq.adapter import BackendLM, HFBackend, load_project_backend
from eval_iq.errors import BackendUnavailableError
from eval_iq.generate import generate


def ll(ctx, cont):
    from lm_eval.api.instance import Instance

    return Instance("loglikelihood", {}, (ctx, cont), 0)


def gen(ctx, until=("\n",), max_gen_toks=12):
    from lm_eval.api.instance import Instance

    return Instance(
        "generate_until",
        {},
        (ctx, {"until": list(until), "do_sample": False, "max_gen_toks": max_gen_toks}),
        0,
    )


def rolling(text):
    from lm_eval.api.instance import Instance

    return Instance("loglikelihood_rolling", {}, (text,), 0)


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
    return HFBackend.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def hflm(tiny_llama_dir):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=3, dtype="float32")


@pytest.fixture(scope="module")
def pairs():
    """Real benchmark contexts with their candidate continuations."""
    out = []
    for name in ("counting", "head_tail", "single_supporting_fact"):
        for inst in generate(name, size=2):
            out += [(inst["prompt"], " " + inst["answer"]), (inst["prompt"], " kitchen")]
    return out


def torch_reference(backend, ctx, cont):
    """log p(cont | ctx) straight from the model: whole-string tokens split at the context length."""
    whole = backend.tokenizer.encode(ctx + cont)
    n_ctx = len(backend.tokenizer.encode(ctx))
    with torch.no_grad():
        logp = torch.log_softmax(backend.model(torch.tensor([whole])).logits[0].float(), -1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(n_ctx, len(whole)))


def test_loglikelihood_matches_torch_and_hf(backend, hflm, pairs):
    adapter = BackendLM(backend, batch_size=4)
    ours = adapter.loglikelihood([ll(c, x) for c, x in pairs], disable_tqdm=True)
    theirs = hflm.loglikelihood([ll(c, x) for c, x in pairs], disable_tqdm=True)
    for (c, x), (a, ga), (b, gb) in zip(pairs, ours, theirs):
        assert a == pytest.approx(torch_reference(backend, c, x), abs=1e-4)
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb
    # scores differ between the gold answer and the distractor: the comparison is not vacuous
    assert len({round(a, 3) for a, _ in ours}) > len(ours) // 2


def test_batch_size_does_not_change_scores(backend, pairs):
    one = BackendLM(backend, batch_size=1).loglikelihood([ll(c, x) for c, x in pairs], disable_tqdm=True)
    many = BackendLM(backend, batch_size=5).loglikelihood([ll(c, x) for c, x in pairs], disable_tqdm=True)
    assert [a for a, _ in one] == pytest.approx([a for a, _ in many], abs=1e-4)


def test_left_truncation_matches_hf(tiny_llama_dir, backend, pairs):
    from lm_eval.models.huggingface import HFLM

    short_hf = HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=2, dtype="float32", max_length=48)
    short = BackendLM(HFBackend(backend.model, backend.tokenizer, max_length=48), batch_size=2)
    reqs = pairs[:4]
    ours = short.loglikelihood([ll(c, x) for c, x in reqs], disable_tqdm=True)
    theirs = short_hf.loglikelihood([ll(c, x) for c, x in reqs], disable_tqdm=True)
    assert [a for a, _ in ours] == pytest.approx([b for b, _ in theirs], abs=1e-4)


def test_loglikelihood_rolling_matches_hf_and_torch(tiny_llama_dir, backend):
    from lm_eval.models.huggingface import HFLM

    text = generate("multi_key_retrieval", size=1)[0]["prompt"]
    hf = HFLM(pretrained=str(tiny_llama_dir), device="cpu", batch_size=2, dtype="float32", max_length=40)
    ours = BackendLM(HFBackend(backend.model, backend.tokenizer, max_length=40), batch_size=2)
    a = ours.loglikelihood_rolling([rolling(text)], disable_tqdm=True)[0]
    b = hf.loglikelihood_rolling([rolling(text)], disable_tqdm=True)[0]
    assert a == pytest.approx(b, abs=1e-3)
    # with a window longer than the text, rolling = log p(text | prefix token), computed directly
    full = BackendLM(backend, batch_size=1).loglikelihood_rolling([rolling(text)], disable_tqdm=True)[0]
    ids = [backend.bos_token_id] + backend.tokenizer.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(backend.model(torch.tensor([ids])).logits[0].float(), -1)
    assert full == pytest.approx(sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))), abs=1e-3)


def test_generate_until_matches_hf(backend, hflm):
    prompts = [i["prompt"] for n in ("counting", "head_slicing", "two_supporting_facts") for i in generate(n, size=2)]
    reqs = [gen(p) for p in prompts] + [gen(p, until=(" ", "\n"), max_gen_toks=6) for p in prompts[:2]]
    ours = BackendLM(backend, batch_size=3).generate_until(reqs, disable_tqdm=True)
    theirs = hflm.generate_until(reqs, disable_tqdm=True)
    assert ours == theirs
    assert BackendLM(backend, batch_size=1).generate_until(reqs, disable_tqdm=True) == ours
    assert any(o.strip() for o in ours)


def test_sampling_is_refused(backend):
    from lm_eval.api.instance import Instance

    req = Instance("generate_until", {}, ("x", {"until": ["\n"], "do_sample": True, "temperature": 0.7}), 0)
    with pytest.raises(ValueError, match="greedily"):
        BackendLM(backend).generate_until([req], disable_tqdm=True)


def test_same_benchmark_scores_as_hf_backend(backend, hflm, iq_data_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from eval_iq.yaml_tasks import TASKS_DIR

    tasks = ["flm_iq_superglue_rte", "flm_iq_counting", "flm_iq_head_tail"]
    outs = []
    for lm in (BackendLM(backend, batch_size=4), hflm):
        tm = TaskManager(
            include_path=str(TASKS_DIR),
            include_defaults=False,
            metadata={"iq_size": 6, "iq_shots": 1, "iq_data_dir": str(iq_data_dir)},
        )
        outs.append(simple_evaluate(model=lm, tasks=tasks, task_manager=tm, log_samples=True, bootstrap_iters=0))
    for task in tasks:
        assert outs[0]["results"][task]["acc,none"] == outs[1]["results"][task]["acc,none"]
        for s0, s1 in zip(outs[0]["samples"][task], outs[1]["samples"][task]):
            r0, r1 = s0["filtered_resps"], s1["filtered_resps"]
            if task == "flm_iq_superglue_rte":
                assert [x[0] for x in r0] == pytest.approx([x[0] for x in r1], abs=1e-4)
            else:
                assert r0 == r1


def test_load_project_backend_errors(tmp_path, monkeypatch, backend):
    with pytest.raises(BackendUnavailableError, match="checkpoint directory not found"):
        load_project_backend(tmp_path / "missing")
    fake = types.ModuleType("training.apps.iq_backend")
    fake.load_backend = lambda path: object()
    monkeypatch.setitem(sys.modules, "training.apps.iq_backend", fake)
    with pytest.raises(BackendUnavailableError, match="missing logits, encode, decode, eos_token_id, max_length"):
        load_project_backend(tmp_path)
    fake.load_backend = lambda path: backend
    assert load_project_backend(tmp_path) is backend
