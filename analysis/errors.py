"""The one error hierarchy: user errors print one line, internal errors say they are ours."""

from __future__ import annotations


class ChunkError(Exception):
    """Base of every error the tool raises on purpose."""


class UserError(ChunkError):
    """A problem with the user's input: printed as one line, exit code 1, no traceback."""


class InternalError(ChunkError):
    """A bug in the tool: printed as INTERNAL ERROR with the file that keeps the evidence."""

    def __init__(self, message: str, evidence: str | None = None) -> None:
        super().__init__(message)
        #: path of a temp file holding the offending output, if any
        self.evidence = evidence


__all__ = ["InternalError", "UserError"]
