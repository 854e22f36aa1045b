"""The Pareto front of (max val acc, min val ECE): one rule for the driver's summary and the report.

Driver-side code does not import the report (study.reporting), and the report reads only
Parquet; both import this module, which needs numpy alone.
"""

from __future__ import annotations

import numpy as np


def pareto_mask(acc: np.ndarray, ece: np.ndarray) -> np.ndarray:
    """Non-dominated points for (max acc, min ECE).

    No other point is at least as good in both and better in one. O(n²), fine for the few
    thousand trials of a study.

    >>> pareto_mask(np.array([90.0, 80.0, 85.0]), np.array([5.0, 2.0, 6.0])).tolist()
    [True, True, False]
    """
    acc_ge = acc[None, :] >= acc[:, None]
    ece_le = ece[None, :] <= ece[:, None]
    strictly = (acc[None, :] > acc[:, None]) | (ece[None, :] < ece[:, None])
    dominated = (acc_ge & ece_le & strictly).any(axis=1)
    return np.asarray(~dominated, dtype=bool)
