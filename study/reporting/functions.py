"""The LAS related functions ε_y = f(N_y) in numpy (shared/method.md, seed Eq. 3.a–3.c and 7).

Restated here rather than imported from ``mislas.las`` because the report must not import torch.
``tests/study/reporting/test_functions.py`` pins the endpoints f(N_1) = ε_1, f(N_K) = ε_K.
"""

from __future__ import annotations

import numpy as np


def related_function(counts: np.ndarray, eps_1: float, eps_k: float, form: str, p: float | None = None) -> np.ndarray:
    """ε per class for class counts ``counts``; x = (N − N_K)/(N_1 − N_K), N_1 largest, N_K smallest.

    >>> related_function(np.array([100, 10]), 0.4, 0.1, "linear").round(3).tolist()
    [0.4, 0.1]
    """
    n = np.asarray(counts, dtype=float)
    n_1, n_k = n.max(), n.min()
    if n_1 == n_k:  # balanced counts: x is undefined, every class gets ε_1 (as mislas.las does)
        return np.full(n.shape, eps_1)
    x = (n - n_k) / (n_1 - n_k)
    if form == "concave":  # Eq. 3.a
        return np.asarray(eps_k + (eps_1 - eps_k) * np.sin(np.pi / 2 * x), dtype=float)
    if form == "linear":  # Eq. 3.b
        return np.asarray(eps_k + (eps_1 - eps_k) * x, dtype=float)
    if form == "convex":  # Eq. 3.c
        return np.asarray(eps_1 + (eps_1 - eps_k) * np.sin(3 * np.pi / 2 + np.pi / 2 * x), dtype=float)
    if form == "exp":  # Eq. 7
        if p is None or not p > 0:
            raise ValueError(f"p > 0 must hold for form='exp', but got p={p!r}")
        return np.asarray(eps_k + (eps_1 - eps_k) * np.power(x, p), dtype=float)
    raise ValueError(f"form must be one of concave, linear, convex, exp, but got {form!r}")
