"""The checkpointer of fit (training/engine/loop/checkpointer.py): the root, the save cadence
(periodic saves after good steps only, never the last step), the final save-if-missing, and the
rollback's newest-verified load. Saves go through the real commit protocol."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from training.checkpoint import commit, read_meta
from training.config import CheckpointConfig
from training.engine.loop.checkpointer import Checkpointer

LAYOUT = SimpleNamespace(tp=1, pp=1, dp=1)


class Saver:
    """An engine's ``save`` stand-in: commits a checkpoint of the current step, records the steps."""

    def __init__(self, root: Path):
        self.root = root
        self.step = 0
        self.saved: list[int] = []

    def __call__(self) -> Path:
        self.saved.append(self.step)
        return commit(self.root, self.step, lambda partial: (partial / "w").write_text("x"), {}, LAYOUT)


def test_root_is_checkpoint_dir_else_under_the_output_dir(tmp_path):
    assert Checkpointer(CheckpointConfig(), tmp_path).root == tmp_path / "checkpoints"
    assert Checkpointer(CheckpointConfig(dir=str(tmp_path / "elsewhere")), tmp_path).root == tmp_path / "elsewhere"


def test_periodic_saves_after_good_steps_then_the_last_step(tmp_path):
    ckpt = Checkpointer(CheckpointConfig(save_interval=2), tmp_path)
    save = Saver(ckpt.root)
    bad = {4}  # step 4 was skipped by the divergence guard: no checkpoint inside a run of bad steps
    for step in range(1, 7):
        save.step = step
        ckpt.after_step(step, until=6, good=step not in bad, save=save)
    assert save.saved == [2]  # 6 is the last step: left to save_if_missing
    ckpt.save_if_missing(6, save)
    assert save.saved == [2, 6]
    ckpt.save_if_missing(6, save)  # already there (e.g. a preempted run saved it, or it resumed at 6)
    assert save.saved == [2, 6]
    assert read_meta(ckpt.root)["step"] == 6


def test_save_interval_zero_saves_only_at_the_end(tmp_path):
    ckpt = Checkpointer(CheckpointConfig(save_interval=0), tmp_path)
    save = Saver(ckpt.root)
    for step in range(1, 4):
        save.step = step
        ckpt.after_step(step, until=3, good=True, save=save)
    ckpt.save_if_missing(3, save)
    assert save.saved == [3]


def test_newest_verified_loads_the_newest_checkpoint_or_none(tmp_path):
    ckpt = Checkpointer(CheckpointConfig(save_interval=2), tmp_path)
    loaded: list[str] = []
    assert ckpt.newest_verified(lambda path: loaded.append(path.name)) is None
    save = Saver(ckpt.root)
    for step in (2, 4):
        save.step = step
        save()
    assert ckpt.newest_verified(lambda path: loaded.append(path.name)) == ckpt.root / "step_0000004"
    assert loaded == ["step_0000004"]
