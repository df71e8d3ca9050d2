"""User-facing exceptions of infjesp.

Every error a user can cause (a malformed ``.dpomdp`` file, a model whose probabilities do not sum
to one, an infinite-horizon solve with ``gamma = 1``) derives from :class:`InfJespError`, whose
message is a single line that the CLI prints to stderr without a traceback.
"""

from __future__ import annotations

__all__ = ["DpomdpParseError", "InfJespError", "ModelValidationError"]


class InfJespError(Exception):
    """Base class of the errors a user can cause; the message is one line."""


class DpomdpParseError(InfJespError, ValueError):
    """A ``.dpomdp`` file does not follow the grammar.

    The message reads ``"{path}:{line}: {what was expected / found}"``.

    Attributes:
        path: The file name (or ``"<string>"`` for parsed text).
        line: The 1-based line number of the offending line.
        reason: The part of the message after ``path:line:``.
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}")

    def __reduce__(self) -> tuple[type[DpomdpParseError], tuple[str, int, str]]:
        return (type(self), (self.path, self.line, self.reason))


class ModelValidationError(InfJespError, ValueError):
    """A Dec-POMDP model is inconsistent (a row that does not sum to 1, a bad shape, ...)."""
