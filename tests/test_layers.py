"""The layering of docs/architecture.md holds: every module is in a layer, the import-linter
contract is kept, function-local imports say why, and the lower layers do not load megatron."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")

PACKAGES = ("training", "growth", "eval_iq")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _layers() -> list[list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in contract["layers"]]


def _covering(module: str, layers: list[list[str]]) -> list[str]:
    return [entry for layer in layers for entry in layer if module == entry or module.startswith(entry + ".")]


def _imports_nothing(path: Path) -> bool:
    return not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse(path.read_text())))


def test_every_module_is_in_exactly_one_layer():
    layers = _layers()
    for name, path in _modules().items():
        covering = _covering(name, layers)
        if not covering and _imports_nothing(path):
            continue  # a package whose __init__ is only a docstring (training, training.data)
        assert len(covering) == 1, f"{name} is in {len(covering)} layers of pyproject.toml ({covering}); put it in one"


def test_layer_contract_is_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _local_imports_without_reason(path: Path) -> list[str]:
    """Function-local imports with no comment on their line, none on the first line of the block of
    imports (blank lines allowed) they belong to, and no comment line right above that block."""
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    import_lines = {
        i
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for i in range(n.lineno - 1, n.end_lineno)
    }
    local = [
        n
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]
    bad = []
    for node in local:
        i = node.lineno - 1
        while i - 1 >= 0 and (i - 1 in import_lines or not lines[i - 1].strip()):
            i -= 1
        while not lines[i].strip():
            i += 1
        stated = (
            any("#" in lines[k] for k in range(node.lineno - 1, node.end_lineno))
            or "#" in lines[i]
            or (i > 0 and lines[i - 1].strip().startswith("#"))
        )
        if not stated:
            bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return bad


def test_function_local_imports_state_their_reason():
    """A function-local import hides a dependency from the layering check's reader; each one says
    why it is local (startup time of `flm`, an optional heavy dependency) in a comment."""
    bad = [b for path in _modules().values() for b in _local_imports_without_reason(path)]
    assert not bad, "function-local imports without a stated reason:\n" + "\n".join(bad)


def test_lower_layers_load_neither_megatron_nor_the_cpu_bridge():
    code = (
        "import sys; import training.config, training.orchestration.stage_plans, growth, growth.verify, training.checkpoint, "
        "training.checkpoint.logical, training.orchestration.grow, training.apps.iq_backend, training.cli; "
        "loaded = sorted(m for m in sys.modules if m.startswith(('megatron', 'training.engine', 'deepspeed'))); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"loaded: {proc.stdout}{proc.stderr[-2000:]}"


def test_only_the_engine_imports_megatron():
    """``training.engine`` installs the CPU bridge before megatron-core loads; a module outside it that
    imported megatron first (isort puts third-party imports above first-party ones) would load it
    unpatched."""
    bad = []
    for name, path in _modules().items():
        if name == "training.engine" or name.startswith("training.engine."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad += [f"{name}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] == "megatron"]
    assert not bad, "\n".join(bad)


def test_bench_does_not_import_tests():
    """Tests may import what they share with the benchmarks from ``bench/`` (``bench/procs.py``,
    ``bench/staged_run.py``); ``bench/`` never imports ``tests`` (a script must run without them)."""
    bad = []
    for path in sorted((REPO / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            bad += [f"bench/{path.name}:{node.lineno} imports {m}" for m in modules if m.split(".")[0] == "tests"]
    assert not bad, "\n".join(bad)
