"""Binned calibration: ECE / MCE, reliability bins, classwise and adaptive ECE.

One binning rule for all of them (right-closed bins (b/n, (b+1)/n], a confidence of 0 in bin 0),
so the overall, classwise and per-split ECE bin identically. Fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mislas.metrics.inputs import ArrayLike, _check_conf_correct, _check_n_bins, _check_probs_labels, _row_chunks
from mislas.spec import DEFAULT_N_BINS


def _bin_upper(n_bins: int) -> np.ndarray:
    """Upper bin edges b/n for b = 1..n, the correctly rounded floats (float64)."""
    return np.arange(1, n_bins + 1, dtype=np.float64) / n_bins


def _bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Right-closed bin of each value in [0, 1], any shape: (b/n, (b+1)/n] -> b, and 0 -> 0.

    One place for the rule, so ECE, classwise ECE and per-split ECE bin identically.
    """
    # First bin whose upper edge is >= value: a value on an edge stays in the lower bin.
    return np.minimum(np.searchsorted(_bin_upper(n_bins), values, side="left"), n_bins - 1)


def _bin_stats(
    confidences: ArrayLike, correct: ArrayLike, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-bin count, summed accuracy and summed confidence, in float64.

    Bins are right-closed, (b/n, (b+1)/n], with boundaries the correctly rounded floats
    b/n; bin 0 also takes a confidence of exactly 0. This is written by hand because
    torchmetrics' ``calibration_error`` bins [lo, hi) while the paper and the reference code
    bin (lo, hi]: a confidence on a boundary would land one bin higher there.
    """
    n_bins = _check_n_bins(n_bins)
    conf, corr_f = _check_conf_correct(confidences, correct)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    acc_sum = np.bincount(idx, weights=corr_f, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return count, acc_sum, conf_sum, _bin_upper(n_bins), int(conf.size)


def ece_mce(confidences: ArrayLike, correct: ArrayLike, n_bins: int = DEFAULT_N_BINS) -> tuple[float, float]:
    """Expected and maximum calibration error, as fractions in [0, 1].

    ECE = Σ_b (n_b / N)·|acc_b − conf_b| and MCE = max over non-empty bins of
    |acc_b − conf_b|, with right-closed bins (b/n, (b+1)/n] (see :func:`_bin_stats`).

    Hand-worked example: four samples at 0.95 (bin 14, 3 right) and two at 0.55 (bin 8,
    1 right) give gaps 0.2 and 0.05, so ECE = 4/6·0.2 + 2/6·0.05 = 0.15 and MCE = 0.2.

    >>> ece, mce = ece_mce([0.95, 0.95, 0.95, 0.95, 0.55, 0.55], [1, 1, 1, 0, 1, 0])
    >>> round(ece, 12), round(mce, 12)
    (0.15, 0.2)
    """
    count, acc_sum, conf_sum, _, n = _bin_stats(confidences, correct, n_bins)
    gap_sum = np.abs(acc_sum - conf_sum)  # n_b·|acc_b − conf_b|
    ece = float(gap_sum.sum() / n)
    nonempty = count > 0
    mce = float(np.max(gap_sum[nonempty] / count[nonempty]))
    return ece, mce


def reliability_bins(confidences: ArrayLike, correct: ArrayLike, n_bins: int = DEFAULT_N_BINS) -> list[dict[str, Any]]:
    """Per-bin data for a reliability diagram (Fig. 9–12); fractions, None for an empty bin.

    Computing is kept apart from drawing so reports can plot it with any backend.
    """
    count, acc_sum, conf_sum, upper, _ = _bin_stats(confidences, correct, n_bins)
    lower = np.concatenate(([0.0], upper[:-1]))
    bins: list[dict[str, Any]] = []
    for b in range(upper.size):
        c = int(count[b])
        bins.append(
            {
                "lower": float(lower[b]),
                "upper": float(upper[b]),
                "count": c,
                "accuracy": float(acc_sum[b] / c) if c else None,
                "confidence": float(conf_sum[b] / c) if c else None,
            }
        )
    return bins


def _classwise_sums(p: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (class, bin) summed 1[y = k] and summed p_k, both [K, n_bins] float64.

    Additive over samples, so chunks of rows can be accumulated.
    """
    n, k = p.shape
    flat = _bin_index(p, n_bins) + (np.arange(k, dtype=np.int64) * n_bins)[None, :]
    p_sum = np.bincount(flat.ravel(), weights=p.ravel(), minlength=k * n_bins)
    hit_sum = np.bincount(flat[np.arange(n), labels], minlength=k * n_bins).astype(np.float64)
    return hit_sum.reshape(k, n_bins), p_sum.reshape(k, n_bins)


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_N_BINS) -> float:
    """Classwise ECE (Kull et al. 2019), a fraction in [0, 1].

    ECE only looks at the top class; this checks every class's probability. For each class
    k, p_k of ALL samples is binned with the right-closed bins of :func:`ece_mce` and
    ECE_k = Σ_b (n_b/N)·|freq_b(y = k) − mean_b(p_k)|; the result is the mean of ECE_k over
    all K classes, including classes never predicted or never present in ``labels``.

    Hand-worked example, K = 2, two bins [0, 1/2], (1/2, 1], rows (0.9, 0.1), (0.7, 0.3),
    (0.2, 0.8) with labels 0, 1, 1. Class 0: the high bin holds 0.9 and 0.7 (one is class 0:
    |1/2 − 0.8| = 0.3, weight 2/3), the low bin 0.2 (|0 − 0.2| = 0.2, weight 1/3), so
    ECE_0 = 0.2 + 0.2/3 = 4/15. Class 1 mirrors it (0.1, 0.3 low with one hit; 0.8 high
    with a hit): ECE_1 = 4/15, mean 4/15.

    >>> round(classwise_ece([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]], [0, 1, 1], n_bins=2), 12)
    0.266666666667
    """
    n_bins = _check_n_bins(n_bins)
    p, lb = _check_probs_labels(probs, labels)
    n, k = p.shape
    hits = np.zeros((k, n_bins))
    psum = np.zeros((k, n_bins))
    for rows in _row_chunks(n, k):
        h, s = _classwise_sums(p[rows], lb[rows], n_bins)
        hits += h
        psum += s
    return float(np.abs(hits - psum).sum() / (n * k))


def adaptive_ece(confidences: ArrayLike, correct: ArrayLike, n_bins: int = DEFAULT_N_BINS) -> float:
    """Adaptive (equal-mass) ECE (Nixon et al. 2019), a fraction in [0, 1].

    Equal-width bins leave most bins nearly empty when confidences pile up near 1; equal-mass
    groups give each gap the same support. Samples are sorted by confidence (stable sort,
    so ties keep their input order) and cut into ``n_bins`` groups exactly as
    ``numpy.array_split`` cuts (the first N mod n_bins groups one larger);
    ACE = Σ_g (n_g/N)·|acc_g − conf_g|. With N < n_bins the empty groups are skipped.

    Hand-worked example, two groups: sorted confidences 0.6 (wrong), 0.7, 0.8 | 0.9, 0.95
    (all right) split 3 + 2. Group 1: |2/3 − 0.7| = 1/30, weight 3/5 → 0.02; group 2:
    |1 − 0.925| = 0.075, weight 2/5 → 0.03; ACE = 0.05.

    >>> round(adaptive_ece([0.9, 0.6, 0.8, 0.7, 0.95], [1, 0, 1, 1, 1], n_bins=2), 12)
    0.05
    """
    n_bins = _check_n_bins(n_bins)
    conf, corr = _check_conf_correct(confidences, correct)
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for group in np.array_split(order, n_bins):
        if group.size:  # n_g·|acc_g − conf_g| = |Σ correct − Σ conf|
            total += abs(float(corr[group].sum()) - float(conf[group].sum()))
    return total / conf.size
