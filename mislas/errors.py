"""The one error type for bad user input.

Command-line edges catch :class:`UsageError`, print its message as a single line and exit
with status 2; library callers get an ordinary ``ValueError`` subclass.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: a file, field or value, and what is allowed."""


EXIT_USAGE = 2
