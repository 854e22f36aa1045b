"""Many / Medium / Few class splits.

The rule is :class:`mislas.spec.SplitRule` (torch-free, shared with the report); this module
keeps the function the library calls and the names it exported.

The documented definition (seed, Sec. A) uses training-count thresholds: Many > 100,
Medium 20..100, Few < 20. The reference code's hard-coded index ranges over classes sorted
by count are offered only as a compatibility option (``SplitRule(index_ranges=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mislas.spec import DEFAULT_SPLIT_RULE, SPLIT_NAMES, SplitRule

__all__ = ["DEFAULT_SPLIT_RULE", "SPLIT_NAMES", "SplitRule", "class_splits"]


def class_splits(counts: Sequence[int] | np.ndarray, rule: SplitRule = DEFAULT_SPLIT_RULE) -> dict[str, np.ndarray]:
    """Class indices of each split under ``rule`` (default: the paper's thresholds).

    >>> class_splits([5000, 300, 50, 5])["few"].tolist()
    [3]
    """
    if not isinstance(rule, SplitRule):
        raise TypeError(f"rule must be a mislas.spec.SplitRule, got {type(rule).__name__}")
    return rule.classes(counts)
