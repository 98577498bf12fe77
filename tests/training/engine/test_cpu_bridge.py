"""The CPU bridge still fits the installed megatron-core: every rewrite matches its module."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="the bridge is only applied without CUDA")
def test_bridge_fits_installed_megatron_core():
    code = (
        "import json, training.engine.cpu_bridge as b, megatron.core as m;"
        "print(json.dumps({'version': m.__version__, 'applied': b.check_fit()}))"
    )
    # a fresh interpreter: the check must see every module imported through the hook
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    from training.engine.cpu_bridge import MODULE_REWRITES, TESTED_MEGATRON_CORE

    assert result["version"] in TESTED_MEGATRON_CORE, (
        f"megatron-core {result['version']} is installed but the bridge is tested with {TESTED_MEGATRON_CORE}"
    )
    assert set(result["applied"]) == set(MODULE_REWRITES)
    for module, counts in result["applied"].items():
        assert all(n > 0 for n in counts.values()), (module, counts)


def test_bridge_refuses_late_install(tmp_path):
    code = "import megatron.core.utils; import training.engine"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, capture_output=True, text=True)
    if torch.cuda.is_available():
        assert out.returncode == 0
    else:
        assert out.returncode != 0 and "imported before the bridge was installed" in out.stderr


def test_every_rewrite_substitutes_a_cuda_idiom():
    """The bridge's rule (its docstring): it only replaces CUDA idioms by their CPU equivalents.
    A behaviour fix would run on CPU only and hide a GPU bug; this lists every rewrite."""
    from training.engine.cpu_bridge import MODULE_REWRITES

    rewrites = {(module, r.old, r.new) for module, rs in MODULE_REWRITES.items() for r in rs}
    assert len(rewrites) == sum(len(rs) for rs in MODULE_REWRITES.values())
    for module, old, new in sorted(rewrites):
        assert "cuda" in old.lower(), f"{module}: {old!r} is not a CUDA idiom; fix it in the project's code"
        assert "cuda" not in new.lower(), f"{module}: {new!r} still uses CUDA"
