"""The flm command: its parser builds without the heavy libraries (flm --help stays instant, and the
processes megatron's checkpoint writer spawns, which re-import __main__, stay cheap)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_building_the_parser_loads_no_heavy_library():
    code = (
        "import sys; from training.cli import build_parser; build_parser(); "
        "heavy = ('torch', 'megatron', 'deepspeed', 'transformers', 'lm_eval', 'datasets', 'matplotlib'); "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy)); print(loaded); "
        "sys.exit(1 if loaded else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"building flm's parser loaded {proc.stdout.strip()}"


def test_user_errors_are_one_line_with_the_command_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "train", str(tmp_path / "missing.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("flm train: error: ") and proc.stderr.count("\n") == 1, proc.stderr
