"""The one error base of the project.

Every error a user can act on derives from :class:`FLMError`: its message names what is wrong,
where (file, config key, checkpoint) and what to do, in one line. ``flm``'s ``main``
(``training.cli``) is the single place that turns one into ``flm: <message>`` on stderr and the
exit status ``exit_code``; nothing else catches them to print.

Exit codes: 2 for input the user can fix (the default), 1 for a failed check that is a bug to
report (a grown model that does not preserve the function, a round trip with different logits),
75 (``PREEMPTED_EXIT_CODE``) for a run stopped by SIGTERM/SIGUSR1 after saving its checkpoint (the
SLURM script requeues the job on it; docs/faults.md).
"""

from __future__ import annotations


class FLMError(Exception):
    """A user-facing error: the message is the whole report (no traceback needed)."""

    #: the process exit status ``flm`` returns for this error
    exit_code: int = 2


class UsageError(FLMError):
    """A command-line argument is wrong or does not fit the config (the message names it)."""


#: exit status of a run that SIGTERM/SIGUSR1 stopped after it saved (EX_TEMPFAIL: try again later)
PREEMPTED_EXIT_CODE = 75

#: when set, every process that exits with PREEMPTED_EXIT_CODE creates this file (launchers whose own
#: exit status cannot carry the workers', torchrun's, read it)
PREEMPT_MARKER_ENV = "FLM_PREEMPT_MARKER"


class PreemptedError(FLMError):
    """SIGTERM/SIGUSR1 arrived: every rank finished its step, the run saved and stops (``--resume``)."""

    exit_code = PREEMPTED_EXIT_CODE


class DataError(FLMError, ValueError):
    """A data input, artefact or setting is wrong; the message names the file and the fix."""
