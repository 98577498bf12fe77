"""The project's logging: one rank-aware setup, made once by the entry point.

Modules log through ``logging.getLogger(__name__)``; every project module lives under the
``training``, ``growth`` or ``eval_iq`` loggers, which :func:`setup_logging` routes to stderr as
``flm <command>: <message>``. Under several processes (torchrun sets ``RANK``), records below
WARNING are shown by rank 0 only, so a message appears once per job instead of once per process;
warnings and errors of other ranks are shown prefixed with their rank.

Third-party noise that says nothing to act on (the warnings megatron-core prints when Transformer
Engine or Apex are absent, DeepSpeed's and megatron's info chatter, lm-eval's per-task notes) is
filtered here too, unless ``verbose``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

PROJECT_LOGGERS = ("training", "growth", "eval_iq")

#: third-party loggers and the level below which they are quiet by default
QUIET_LOGGERS = {
    # megatron's info chatter, and its "Unknown MLP type" warning: the project spec's MLP subclass
    # gets its TP group through the spec's params
    "megatron": logging.ERROR,
    "DeepSpeed": logging.WARNING,
    "deepspeed": logging.WARNING,
    "lm-eval": logging.WARNING,
    "lm_eval": logging.WARNING,
    "datasets": logging.ERROR,
    "transformers": logging.ERROR,
    "torch.distributed": logging.ERROR,
    # "No CUDA runtime is found, using CUDA_HOME=...": a CUDA build of torch on a node without a GPU
    # (a login node running flm plan or config show), said when megatron or DeepSpeed import it
    "torch.utils.cpp_extension": logging.ERROR,
}

#: warnings (regular expressions of their message) that are known to be harmless here
HARMLESS_WARNINGS = (
    r".*(Transformer Engine|TransformerEngine|Apex|apex).*(not installed|Falling back).*",
    r".*Custom kwargs can be passed.*",
    r".*is deprecated.*",
    r".*torch\.distributed\.reduce_op.*",
    r".*TypedStorage is deprecated.*",
    # torch DCP in a plain process (flm grow, logical writes): single-process saving is what is meant
    r".*torch\.distributed is disabled, unavailable or uninitialized.*",
)


#: third-party log messages (regular expressions) that say nothing to act on, by logger
HARMLESS_RECORDS = {
    # lm-eval, once per task built from a Python dataset function (all of the IQ benchmark's)
    "lm_eval.api.task": r".*Custom kwargs can be passed to `--metadata`.*",
}


class _DropMatching(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern, re.S)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        record.msg = f"[rank {self.rank}] {record.msg}"
        return True


def process_rank() -> int:
    """This process's global rank as the launcher set it (0 for a plain process)."""
    return int(os.environ.get("RANK", "0") or 0)


def setup_logging(verbose: bool = False, command: str | None = None) -> None:
    """Send the project's records to stderr as ``flm <command>: message`` (INFO and up; DEBUG and
    the third-party messages with ``verbose``).

    Idempotent: a second call replaces the handler the first one installed.
    """
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"flm {command}" if command else "flm"
    handler.setFormatter(logging.Formatter(f"{prefix}: %(message)s"))
    handler.addFilter(_RankFilter(process_rank()))
    handler.set_name("flm")
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h.get_name() == "flm"]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        return
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, pattern in HARMLESS_RECORDS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMatching) for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))
