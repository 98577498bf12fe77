"""The lm-eval tasks and groups: YAMLs match the registry; real lm-eval runs score an oracle at
100% and a constant answerer at chance; groups aggregate as documented; no network is used."""

from __future__ import annotations

import json
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
    return simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit, log_samples=True, bootstrap_iters=1000)


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
    assert results["flm_iq_single_supporting_fact"]["acc,none"] == pytest.approx(golds.count("kitchen") / SIZE)
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
        assert groups[f"flm_iq_{cat}"]["acc,none"] == pytest.approx(sum(leaf[n] for n in members) / len(members))
    # FLM IQ is the mean of the 4 categories in lm-eval's flm_iq row and in flm iq's report alike
    cats = [groups[f"flm_iq_{c}"]["acc,none"] for c in CATEGORIES]
    assert groups["flm_iq"]["acc,none"] == pytest.approx(sum(cats) / 4)
    assert groups["flm_iq"]["acc,none"] != pytest.approx(sum(leaf.values()) / 17)  # not the leaf mean
    specs = [SUBTASKS[n] for n in BENCHMARK_SUBTASKS]
    summary = summarize(res, specs, {}, {"name": "constant"})
    for cat in CATEGORIES:
        assert summary["categories"][cat]["acc"] == pytest.approx(groups[f"flm_iq_{cat}"]["acc,none"])
        assert summary["categories"][cat]["complete"]
    assert summary["flm_iq"] == {"acc": pytest.approx(groups["flm_iq"]["acc,none"]), "complete": True}
    assert "partial" not in groups["flm_iq"]["alias"]


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


def test_group_run_with_a_missing_dataset_completes_with_a_warning(shared_data, constant_lm_class, caplog):
    """../shared/data has no AFQMC: lm_eval --tasks flm_iq runs the rest, warns which subtask it
    skipped and why, marks the groups that contain it partial, and still prints FLM IQ equal to
    flm iq's (from the 16 subtasks it ran)."""
    import logging

    instances = [i for n in BENCHMARK_SUBTASKS if n != "afqmc" for i in generate(n, size=SIZE, data_dir=shared_data)]
    with caplog.at_level(logging.WARNING):
        res = run_lm_eval(constant_lm_class(instances), ["flm_iq"], shared_data)
    skipped = [r.getMessage() for r in caplog.records if "skipping IQ subtask" in r.getMessage()]
    assert len(skipped) == 1 and "flm_iq_clue_afqmc" in skipped[0] and "no eval file" in skipped[0]
    assert "acc,none" not in res["results"].get("flm_iq_clue_afqmc", {})
    groups = res["groups"]
    for g in ("flm_iq_clue", "flm_iq_symbolic", "flm_iq"):
        assert "(partial: without flm_iq_clue_afqmc)" in groups[g]["alias"], g
    for g in ("flm_iq_superglue", "flm_iq_rules", "flm_iq_patterns", "flm_iq_anti_interference"):
        assert "partial" not in groups[g]["alias"], g
    ran = [SUBTASKS[n] for n in BENCHMARK_SUBTASKS if n != "afqmc"]
    summary = summarize(res, ran, {}, {"name": "constant"}, skipped={"afqmc": "missing"})
    assert summary["categories"]["symbolic"]["complete"] is False
    assert summary["categories"]["symbolic"]["acc"] == pytest.approx(groups["flm_iq_symbolic"]["acc,none"])
    assert groups["flm_iq"]["acc,none"] == pytest.approx(summary["flm_iq"]["acc"])


def test_num_fewshot_is_fixed_by_the_benchmark(tmp_path):
    """The YAMLs say so, and lm-eval leaves a task whose config says 0 at 0 demonstrations."""
    from lm_eval.tasks import TaskManager

    text = (TASKS_DIR / "task_counting.yaml").read_text()
    assert "iq_shots" in text and "num_fewshot: 0" in text
    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"iq_size": 2})
    task = tm.load(["flm_iq_head_tail"])["tasks"]["flm_iq_head_tail"]
    assert task.get_config("num_fewshot") == 0


def _fake_eval_iq(root: Path, version: str) -> Path:
    """A different ``eval_iq`` package (another checkout or an old install) at ``root``."""
    pkg = root / "eval_iq"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f'__version__ = "{version}"\nFAKE = True\n')
    return root


def _load_in_subprocess(tmp_path, script: str, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_hook_loads_the_sibling_code_not_an_installed_copy(tmp_path):
    fake = _fake_eval_iq(tmp_path / "elsewhere", "0.9")
    out = _load_in_subprocess(
        tmp_path,
        f"""
        import sys
        from lm_eval.tasks import TaskManager
        tm = TaskManager(include_path={str(TASKS_DIR)!r}, include_defaults=False, metadata={{"iq_size": 2}})
        task = tm.load(["flm_iq_counting"])["tasks"]["flm_iq_counting"]
        import eval_iq
        print(eval_iq.__file__, len(list(task.eval_docs)))
    """,
        fake,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    path, n = out.stdout.split()
    assert Path(path).resolve() == (REPO_ROOT / "eval_iq" / "__init__.py").resolve() and n == "2"


def test_hook_refuses_an_already_imported_eval_iq_of_another_version(tmp_path):
    fake = _fake_eval_iq(tmp_path / "elsewhere", "0.9")
    out = _load_in_subprocess(
        tmp_path,
        f"""
        import eval_iq
        assert eval_iq.FAKE
        from lm_eval.tasks import TaskManager
        tm = TaskManager(include_path={str(TASKS_DIR)!r}, include_defaults=False, metadata={{"iq_size": 2}})
        tm.load(["flm_iq_counting"])
    """,
        fake,
    )
    assert out.returncode != 0
    from eval_iq import __version__

    assert f"are version {__version__}, but this process already imported eval_iq 0.9" in out.stderr, out.stderr[-3000:]


@pytest.mark.slow
def test_lm_eval_cli_runs_flm_iq_with_the_shipped_data(tmp_path, shared_data):
    """The docs' usage example: the whole benchmark from lm_eval's CLI with ../shared/data."""
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
            "flm_iq",
            "--include_path",
            str(TASKS_DIR),
            "--limit",
            "1",
            "--metadata",
            json.dumps({"iq_size": 3, "iq_data_dir": str(shared_data)}),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FLM IQ (mean of the four categories) (partial: without flm_iq_clue_afqmc)" in out.stdout
    assert "skipping IQ subtask flm_iq_clue_afqmc" in out.stderr


def test_tasks_readme_lists_every_task_and_group():
    readme = (TASKS_DIR / "README.md").read_text(encoding="utf-8")
    for heading in ("### Paper", "### Citation", "### Groups, Tags, and Tasks", "### Checklist"):
        assert heading in readme, heading
    for name in [*ALL_TASKS, *group_members()]:
        assert f"`{name}`" in readme, name
    from eval_iq import __version__

    assert f"* {__version__}:" in readme, "add the harness version to the README's changelog"
