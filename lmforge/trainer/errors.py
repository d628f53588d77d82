"""Errors a stage raises to fail with a clear one-line reason instead of a traceback."""

from __future__ import annotations


class StageError(Exception):
    """The stage cannot complete; `str(exc)` is the one-line reason shown to users.

    `retryable=False` tells the operator that retrying cannot help (bad input), so it does not
    restart the pod into a crash loop.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class InvalidInput(StageError):
    """The spec, its inputs or the data are wrong; names the field, file or row. Never retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)
