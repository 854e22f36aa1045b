"""Progress lines on stderr: the stages' one way to tell a person what they are doing."""

from __future__ import annotations

import sys

__all__ = ["log"]


def log(progress: bool, message: str) -> None:
    """``message`` on stderr (flushed) when ``progress`` is on."""
    if progress:
        print(message, file=sys.stderr, flush=True)
