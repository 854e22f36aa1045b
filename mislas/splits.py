"""Many / Medium / Few class splits.

The documented definition (seed, Sec. A) uses training-count thresholds: Many > 100,
Medium 20..100, Few < 20. The reference code's hard-coded index ranges over classes sorted
by count are offered only as a compatibility option.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLIT_NAMES = ("many", "medium", "few")


def class_splits(
    counts: Sequence[int],
    many_above: int = 100,
    few_below: int = 20,
    index_ranges: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Class indices of each split.

    With ``index_ranges=(n_many, n_medium)`` classes are sorted by descending count and the
    first ``n_many`` are Many, the next ``n_medium`` Medium, the rest Few (reference style).
    """
    counts_arr = np.asarray(counts, dtype=np.int64)
    if counts_arr.ndim != 1 or counts_arr.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {counts_arr.shape}")
    if index_ranges is not None:
        n_many, n_medium = index_ranges
        if n_many < 0 or n_medium < 0 or n_many + n_medium > counts_arr.size:
            raise ValueError(
                f"index_ranges must be non-negative and sum to at most {counts_arr.size}, got {index_ranges}"
            )
        order = np.argsort(-counts_arr, kind="stable")
        return {
            "many": np.sort(order[:n_many]),
            "medium": np.sort(order[n_many : n_many + n_medium]),
            "few": np.sort(order[n_many + n_medium :]),
        }
    if few_below > many_above + 1:
        raise ValueError(f"few_below <= many_above + 1 must hold, got few_below={few_below}, many_above={many_above}")
    idx = np.arange(counts_arr.size)
    return {
        "many": idx[counts_arr > many_above],
        "medium": idx[(counts_arr >= few_below) & (counts_arr <= many_above)],
        "few": idx[counts_arr < few_below],
    }
