"""Train proxies, one ``flm train`` process each, and read their losses.

Each proxy lives in ``<out>/<name>/``: ``config.yaml`` (the proxy's resolved run config, what was
trained), ``train.log`` (the process's output), and the run's own ``metrics.jsonl`` and final
checkpoint. A proxy runs as ``python -m training.cli train config.yaml --resume`` in a fresh
interpreter, so proxies share no state (RNG, megatron globals, allocator) and a crash is contained
to its proxy; they run one after the other (a proxy already uses every core through torch's
threads). ``--resume`` makes a rerun continue an interrupted proxy; a finished one (its final
checkpoint and the metrics record of its last step on disk) is not started again, and a directory
holding a proxy of another config is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

import training
from training import checkpoint
from training.config import RunConfig, run_config_to_dict
from training.errors import FLMError, UsageError
from training.mup.proxies import proxy_config, proxy_name

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"


class ProxyError(FLMError):
    """A proxy could not be trained or read (the message names the proxy and why)."""

    exit_code = 1


@dataclass
class Proxy:
    """One proxy run: its name (directory), width, LR, seed and run config."""

    name: str
    width: int
    lr: float
    seed: int
    config: RunConfig

    @property
    def dir(self) -> Path:
        return Path(self.config.output_dir)

    def describe(self) -> str:
        return f"proxy {self.name} (width {self.width}, lr {self.lr:g}, seed {self.seed})"


def make_proxy(base: RunConfig, width: int, out_dir: Path, lr: float, seed: int, steps: Optional[int]) -> Proxy:
    """The proxy of ``base`` at ``width``, ``lr`` and ``seed``, in ``out_dir/<proxy_name>``."""
    name = proxy_name(width, lr, seed)
    cfg = proxy_config(base, width, output_dir=str(out_dir / name), lr=lr, seed=seed, steps=steps)
    return Proxy(name, width, lr, seed, cfg)


@dataclass
class ProxyOutcome:
    """What a proxy's run gave: its metrics records, or why it failed (``error``)."""

    proxy: Proxy
    records: list[dict[str, Any]] = field(default_factory=list)
    error: Optional[str] = None
    reused: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl`` (empty when there is none; torn lines skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill
            continue
    return out


def finished(proxy: Proxy) -> bool:
    """The proxy's final checkpoint and last step's metrics are on disk."""
    steps = proxy.config.train.steps
    final = proxy.config.checkpoint_root / checkpoint.step_dir_name(steps)
    return checkpoint.is_checkpoint(final) and any(r.get("step") == steps for r in read_records(proxy.dir))


def _failure_reason(log_path: Path, code: int) -> str:
    """The ``flm train: error: ...`` line of a failed run's log, else its last line."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("flm train: error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"exit status {code}: {last[:500]} (log: {log_path})"


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{dotted.key: value}``."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _prepare_dir(proxy: Proxy) -> None:
    """Write the proxy's config.yaml; refuse a directory that holds a proxy of another config."""
    data = run_config_to_dict(proxy.config)
    path = proxy.dir / CONFIG_FILE
    if path.is_file():
        old = yaml.safe_load(path.read_text())
        if old != data:
            was, now = _flat(old), _flat(data)
            changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
            raise UsageError(
                f"{proxy.dir} holds a {proxy.describe()} trained with another config (differs in "
                f"{', '.join(changed[:6])}); remove the directory or choose another --out"
            )
        return
    proxy.dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def train_proxy(proxy: Proxy) -> ProxyOutcome:
    """Train one proxy in a fresh ``flm train`` process (or reuse it when finished)."""
    _prepare_dir(proxy)
    if finished(proxy):
        return ProxyOutcome(proxy, read_records(proxy.dir), reused=True)
    # the child runs the same code as this process: its package root goes first on its path
    root = str(Path(training.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "training.cli", "train", str(proxy.dir / CONFIG_FILE), "--resume"]
    log_path = proxy.dir / LOG_FILE
    t0 = time.perf_counter()
    with open(log_path, "a") as out:
        out.write(f"+ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode
    seconds = time.perf_counter() - t0
    if code != 0:
        return ProxyOutcome(proxy, read_records(proxy.dir), error=_failure_reason(log_path, code), seconds=seconds)
    return ProxyOutcome(proxy, read_records(proxy.dir), seconds=seconds)


def train_proxies(proxies: list[Proxy]) -> list[ProxyOutcome]:
    """Train ``proxies`` one after the other; a failed proxy is reported (logged and in its
    outcome) and the others still run."""
    outcomes = []
    for i, proxy in enumerate(proxies, 1):
        log.info("[%d/%d] %s -> %s", i, len(proxies), proxy.describe(), proxy.dir)
        outcome = train_proxy(proxy)
        if outcome.reused:
            log.info("[%d/%d] %s: finished run reused", i, len(proxies), proxy.name)
        elif outcome.ok:
            log.info("[%d/%d] %s: trained in %.0f s", i, len(proxies), proxy.name, outcome.seconds)
        else:
            log.warning("[%d/%d] %s failed: %s", i, len(proxies), proxy.describe(), outcome.error)
        outcomes.append(outcome)
    return outcomes


METRICS = ("val_loss", "loss")


def loss_at(
    records: list[dict[str, Any]], *, step: Optional[int] = None, metric: str = "val_loss", window: int = 1
) -> float:
    """The loss a proxy reached: ``metric`` ``val_loss`` at ``step`` (default: the last record's
    step), or ``loss`` (train loss) averaged over the ``window`` steps ending at ``step``.
    ValueError saying what is missing."""
    if not records:
        raise ValueError("no metrics records")
    by_step = {int(r["step"]): r for r in records if "step" in r}
    last = max(by_step)
    step = last if step is None else step
    if step > last:
        raise ValueError(f"the run ended at step {last}, before step {step}")
    if metric == "val_loss":
        value = by_step.get(step, {}).get("val_loss")
        if value is None:
            raise ValueError(
                f"no val_loss at step {step}: validation runs every train.eval_interval steps and at the last "
                "step; choose a step where it ran or --metric loss"
            )
        return float(value)
    if metric != "loss":
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    steps = range(step - window + 1, step + 1)
    missing = [s for s in steps if s not in by_step or by_step[s].get("loss") is None]
    if missing:
        raise ValueError(f"no train loss recorded at step(s) {missing[:5]} (train.log_interval must be 1 for --window)")
    values = [float(by_step[s]["loss"]) for s in steps]
    return sum(values) / len(values) if all(math.isfinite(v) for v in values) else math.nan
