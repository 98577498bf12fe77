"""The one error base of the project.

Every error a user can act on derives from :class:`FLMError`: its message names what is wrong,
where (file, config key, checkpoint) and what to do, in one line. ``flm``'s ``main``
(``training.cli``) is the single place that turns one into ``flm: <message>`` on stderr and the
exit status ``exit_code``; nothing else catches them to print.

Exit codes: 2 for input the user can fix (the default), 1 for a failed check that is a bug to
report (a grown model that does not preserve the function, a round trip with different logits).
"""

from __future__ import annotations


class FLMError(Exception):
    """A user-facing error: the message is the whole report (no traceback needed)."""

    #: the process exit status ``flm`` returns for this error
    exit_code: int = 2


class UsageError(FLMError):
    """A command-line argument is wrong or does not fit the config (the message names it)."""
