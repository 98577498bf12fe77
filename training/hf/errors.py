"""The one exception type of ``training.hf``."""

from __future__ import annotations

from training.errors import FLMError


class HFInteropError(FLMError, ValueError):
    """An input cannot be converted (unsupported variant or architecture, missing or mismatched
    files); the message names the file or setting and what to do. The CLI prints it and exits 2."""


class RoundTripMismatch(HFInteropError):
    """A round-trip check found different logits on the two sides (a conversion bug; exit code 1)."""

    exit_code = 1
