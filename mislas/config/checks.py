"""Value checks for the config sections: one line naming the key, the rule, then the value.

E.g. "stage2.eps_1 must be a finite number in [0, 1), got nan"; raised as :class:`UsageError`.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterable

from mislas.errors import UsageError


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(key: str, value: object, *, low: int = 0) -> None:
    """An integer >= ``low``."""
    if not _is_int(value) or typing.cast(int, value) < low:
        raise UsageError(f"{key} must be an integer >= {low}, got {value!r}")


def _float(key: str, value: object, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> None:
    """A finite number in the interval; NaN and ±inf are refused whatever the bounds."""
    ok = _is_number(value) and math.isfinite(typing.cast(float, value))
    if ok:
        v = typing.cast(float, value)
        if low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
    if not ok:
        if low is not None and high is not None:
            rule = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            rule = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            rule = f"{'<' if high_open else '<='} {high:g}"
        else:
            rule = ""
        raise UsageError(f"{key} must be a finite number{' ' + rule if rule else ''}, got {value!r}")


def _bool(key: str, value: object, *, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        raise UsageError(f"{key} must be true or false{' or None' if optional else ''}, got {value!r}")


def _choice(key: str, value: object, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise UsageError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def _optional_str(key: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise UsageError(f"{key} must be a string or None, got {value!r}")
