"""The project's error types: bad user input, and training that diverged.

Command-line edges catch :class:`UsageError`, print its message as a single line and exit
with status 2; library callers get an ordinary ``ValueError`` subclass. A non-finite loss or
parameter raises :class:`NonFiniteError` (a ``FloatingPointError``).
"""

from __future__ import annotations

from typing import Any


class UsageError(ValueError):
    """Bad input from the user: a file, field or value, and what is allowed."""


EXIT_USAGE = 2


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or parameter (a diverged setting).

    Typed so that callers (a study marking a trial as diverged) need not match "nan" or
    "inf" in exception text. ``stage`` and ``epoch`` say where; ``member`` which config of a
    Stage-2 group (its index), when known.
    """

    def __init__(self, message: str, *, stage: int, epoch: int, member: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.epoch = epoch
        self.member = member

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by keyword (the default re-calls ``cls(*args)`` without them): it crosses processes."""
        return (_rebuild_non_finite, (str(self), self.stage, self.epoch, self.member))


def _rebuild_non_finite(message: str, stage: int, epoch: int, member: int | None) -> NonFiniteError:
    return NonFiniteError(message, stage=stage, epoch=epoch, member=member)
