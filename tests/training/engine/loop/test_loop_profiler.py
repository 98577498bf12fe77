"""The profiler collaborator (``training.engine.loop.profiler``): exactly the window's steps on the
chosen ranks are traced, into a TensorBoard-readable Chrome-trace file; bad windows and ranks are
refused naming the field."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.helpers import TINY
from tests.trackers import profiled_steps
from training.config import ProfileConfig, load_run_config
from training.config_base import ConfigError
from training.engine.loop.profiler import PROFILE_DIR, StepProfiler


def _train(profiler: StepProfiler, steps: int) -> None:
    """Stand-in optimizer steps: a matmul each, between the profiler's hooks as ``fit`` calls them."""
    w = torch.randn(16, 16, requires_grad=True)
    for step in range(1, steps + 1):
        profiler.before_step(step)
        (w @ w).sum().backward()
        profiler.after_step(step)
    profiler.close()


def test_only_the_window_is_traced_into_a_tensorboard_trace(tmp_path):
    _train(StepProfiler(ProfileConfig(start_step=2, steps=2, ranks=[0]), tmp_path, rank=0, world_size=1), 5)
    trace_dir = tmp_path / PROFILE_DIR
    (trace,) = trace_dir.glob("*.pt.trace.json")
    assert trace.name.startswith("rank0.")  # tensorboard_trace_handler's <worker>.<ts>.pt.trace.json
    assert profiled_steps(trace_dir) == [[2, 3]]


def test_a_rank_not_listed_traces_nothing(tmp_path):
    profiler = StepProfiler(ProfileConfig(start_step=1, steps=2, ranks=[0]), tmp_path, rank=1, world_size=2)
    assert not profiler.enabled
    _train(profiler, 3)
    assert not (tmp_path / PROFILE_DIR).exists()


def test_a_run_stopped_inside_the_window_writes_what_it_traced(tmp_path):
    _train(StepProfiler(ProfileConfig(start_step=2, steps=5, ranks=[0]), tmp_path, rank=0, world_size=1), 3)
    assert profiled_steps(tmp_path / PROFILE_DIR) == [[2, 3]]


def test_a_rank_the_job_lacks_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="rank 2 does not exist") as err:
        StepProfiler(ProfileConfig(ranks=[0, 2]), tmp_path, rank=0, world_size=2)
    assert err.value.key == "logging.profile.ranks"


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("logging.profile.start_step=0", "logging.profile.start_step", "must be >= 1"),
        ("logging.profile.steps=0", "logging.profile.steps", "must be >= 1"),
        ("logging.profile.ranks=[]", "logging.profile.ranks", "lists no rank"),
        ("logging.profile.ranks=[-1]", "logging.profile.ranks[0]", "must be a rank >= 0"),
        ("logging.profile.ranks=[1,1]", "logging.profile.ranks", "names a rank twice"),
        ("logging.profile.start_step=20", "logging.profile.start_step", "ends after the run's last step 20"),
        ("logging.profile.oops=1", "logging.profile.oops", "unknown key"),
    ],
)
def test_bad_profile_settings_name_the_field(override, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_run_config(TINY, ["train.steps=20", override])
    assert err.value.key == key
    assert "\n" not in str(err.value)


@pytest.mark.skipif(
    importlib.util.find_spec("torch_tb_profiler") is None,
    reason="TensorBoard's profiler plugin is not installed (pip install 'flm-grow[profile]')",
)
def test_tensorboards_profiler_plugin_reads_the_trace(tmp_path):
    """The plugin's own parser (what ``tensorboard --logdir <output_dir>/profile`` runs) finds the
    worker, the window's steps and its views in the trace."""
    from torch_tb_profiler import consts
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    _train(StepProfiler(ProfileConfig(start_step=2, steps=2, ranks=[0]), tmp_path, rank=0, world_size=1), 4)
    (trace,) = (tmp_path / PROFILE_DIR).glob("*.pt.trace.json")
    match = consts.WORKER_PATTERN.match(trace.name)
    assert match is not None and match.group(1) == "rank0"
    data = RunProfileData.parse("rank0", 1, str(trace), str(tmp_path / "cache"))
    assert list(data.steps_names) == ["2", "3"]
    views = [view.display_name for view in RunGenerator("rank0", 1, data).generate_run_profile().views]
    assert {"Overview", "Operator", "Trace"} <= set(views)
