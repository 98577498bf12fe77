"""The lm-eval tasks and groups: YAMLs match the registry; real lm-eval runs score an oracle at
100% and a constant answerer at chance; groups aggregate as documented; no network is used."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eval_iq.errors import UnknownSubtaskError
from eval_iq.generate import generate
from eval_iq.registry import BENCHMARK_SUBTASKS, CATEGORIES, SUBTASKS, group_members, resolve_subtasks
from eval_iq.report import summarize
from eval_iq.yaml_tasks import TASKS_DIR, stale_files

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_TASKS = [s.task for s in SUBTASKS.values()]
SIZE = 60  # divisible by 2 and 3: a constant symbol scores exactly 1/K


def run_lm_eval(lm, tasks, data_dir, size=SIZE, limit=None):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(
        include_path=str(TASKS_DIR),
        include_defaults=False,
        metadata={"iq_size": size, "iq_data_dir": str(data_dir)},
    )
    return simple_evaluate(
        model=lm, tasks=tasks, task_manager=tm, limit=limit, log_samples=True, bootstrap_iters=1000
    )


def all_instances(data_dir, size=SIZE):
    return [i for n in SUBTASKS for i in generate(n, size=size, data_dir=data_dir)]


def test_yaml_files_match_registry():
    assert stale_files() == [], "run: python -m eval_iq.yaml_tasks --write"


def test_task_index_has_every_task_and_group():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert set(tm.all_subtasks) == set(ALL_TASKS)
    assert set(tm.all_groups) == set(group_members())


def test_resolve_subtasks():
    assert [s.name for s in resolve_subtasks("all")] == list(BENCHMARK_SUBTASKS)
    assert len(BENCHMARK_SUBTASKS) == 17
    assert [s.name for s in resolve_subtasks("rules")] == ["counting", "replace_lowercase", "replace_word"]
    assert [s.name for s in resolve_subtasks("wsc, flm_iq_counting,clue")] == [
        "wsc",
        "afqmc",
        "csl",
        "ocnli",
        "cluewsc",
        "counting",
    ]
    assert [s.name for s in resolve_subtasks(["bustm"])] == ["bustm"]
    with pytest.raises(UnknownSubtaskError, match=r"'countin'.*Valid: 'all'"):
        resolve_subtasks("counting,countin")
    with pytest.raises(UnknownSubtaskError, match="empty"):
        resolve_subtasks(" , ")


def test_oracle_scores_100_percent_everywhere(iq_data_dir, oracle_lm_class, no_network):
    lm = oracle_lm_class(all_instances(iq_data_dir, size=24))
    res = run_lm_eval(lm, ALL_TASKS, iq_data_dir, size=24)
    for task in ALL_TASKS:
        assert res["results"][task]["acc,none"] == 1.0, task
        assert len(res["samples"][task]) == 24
    assert lm.calls > 0 and no_network == []


def test_constant_answer_scores_chance(iq_data_dir, constant_lm_class, no_network):
    lm = constant_lm_class(all_instances(iq_data_dir), constant="kitchen")
    res = run_lm_eval(lm, ["flm_iq", "flm_iq_clue_bustm"], iq_data_dir)
    results = res["results"]
    for name, spec in SUBTASKS.items():
        acc = results[spec.task]["acc,none"]
        if spec.category == "symbolic":  # balanced gold schedule: exactly 1/K
            assert acc == pytest.approx(spec.chance), name
        elif spec.category == "anti_interference":
            assert acc <= spec.chance + 0.1, name
        else:
            assert acc == 0.0 == spec.chance, name
    # the lm-eval score is exactly the frequency of the constant among the gold answers
    golds = [i["answer"] for i in generate("single_supporting_fact", size=SIZE)]
    assert results["flm_iq_single_supporting_fact"]["acc,none"] == pytest.approx(
        golds.count("kitchen") / SIZE
    )
    assert no_network == []


@pytest.mark.parametrize("name", ["single_supporting_fact", "two_supporting_facts"])
def test_constant_location_answers_average_to_chance(name):
    golds = [i["answer"] for i in generate(name)]
    from eval_iq.gen_anti import LOCATIONS

    per_location = [golds.count(loc) / len(golds) for loc in LOCATIONS]
    assert sum(per_location) / len(per_location) == pytest.approx(SUBTASKS[name].chance)
    assert max(per_location) < SUBTASKS[name].chance + 0.08


def test_groups_aggregate_as_documented(iq_data_dir, constant_lm_class):
    # a model that is right on a subtask-dependent subset makes the aggregation visible
    lm = constant_lm_class(all_instances(iq_data_dir), constant="kitchen")
    res = run_lm_eval(lm, ["flm_iq"], iq_data_dir)
    leaf = {s.name: res["results"][s.task]["acc,none"] for s in SUBTASKS.values() if s.in_benchmark}
    groups = res["groups"]
    for cat in CATEGORIES:
        members = [n for n in BENCHMARK_SUBTASKS if SUBTASKS[n].category == cat]
        assert groups[f"flm_iq_{cat}"]["acc,none"] == pytest.approx(
            sum(leaf[n] for n in members) / len(members)
        )
    # lm-eval's flm_iq row averages the 17 leaves; the report's FLM IQ averages the 4 categories
    assert groups["flm_iq"]["acc,none"] == pytest.approx(sum(leaf.values()) / 17)
    specs = [SUBTASKS[n] for n in BENCHMARK_SUBTASKS]
    summary = summarize(res, specs, {}, {"name": "constant"})
    for cat in CATEGORIES:
        assert summary["categories"][cat]["acc"] == pytest.approx(groups[f"flm_iq_{cat}"]["acc,none"])
        assert summary["categories"][cat]["complete"]
    cats = [summary["categories"][c]["acc"] for c in CATEGORIES]
    assert summary["flm_iq"] == {"acc": pytest.approx(sum(cats) / 4), "complete": True}


def test_tasks_load_from_any_working_directory_without_install(tmp_path):
    """lm-eval imports the YAMLs' hook module by path; it must find eval_iq on its own."""
    script = textwrap.dedent(f"""
        import sys
        assert not any(p and {str(REPO_ROOT)!r} == p for p in sys.path)
        from lm_eval.tasks import TaskManager
        tm = TaskManager(include_path={str(TASKS_DIR)!r}, include_defaults=False, metadata={{"iq_size": 3}})
        task = tm.load(["flm_iq_counting"])["tasks"]["flm_iq_counting"]
        docs = list(task.eval_docs)
        assert len(docs) == 3 and docs[0]["prompt"].endswith("Answer:"), docs[0]
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_lm_eval_cli_runs_group_from_elsewhere(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "run",
            "--model",
            "dummy",
            "--tasks",
            "flm_iq_rules",
            "--include_path",
            str(TASKS_DIR),
            "--limit",
            "2",
            "--metadata",
            '{"iq_size": 4}',
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Rule understanding" in out.stdout and "acc" in out.stdout
