"""Exceptions raised by the IQ benchmark, each carrying a message that names the fix.

All of them derive from :class:`IQError` (a ``ValueError``), so callers such as the ``flm iq``
command can report them as user errors (exit code 2) instead of tracebacks.
"""

from __future__ import annotations

from training.errors import FLMError


class IQError(FLMError, ValueError):
    """Base class: a user-facing problem with the benchmark's inputs or configuration."""


class UnknownSubtaskError(IQError):
    """A subtask, category or task name that the registry does not know."""


class DataNotFoundError(IQError):
    """A dataset directory or file that symbolic mapping needs is missing or unreachable."""


class MalformedDataError(IQError):
    """A dataset file exists but its content cannot be used (bad JSON, missing field, bad label)."""


class BackendUnavailableError(IQError):
    """A model backend cannot be constructed (e.g. the project-checkpoint loader is missing)."""
