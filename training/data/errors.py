"""The one exception type of the data pipeline.

``DataError`` is raised for every problem a user can fix (a missing file, a malformed line, a
vocabulary that does not fit). Its message names the file (and line, where there is one) and says
what to do. The CLI prints the message and exits with status 2; no traceback is needed to act on it.
"""

from __future__ import annotations

from training.errors import FLMError


class DataError(FLMError, ValueError):
    """A data input, artefact or setting is wrong; the message names the file and the fix."""
