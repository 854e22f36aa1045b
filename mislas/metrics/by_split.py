"""Metrics per Many / Medium / Few split: accuracy, ECE and confidence quantiles.

The splits come from a :class:`mislas.spec.SplitRule`; the per-class accuracy the split means
start from is here too.

A split with no class, or none with an eval sample, is None (reported as missing), never 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mislas.metrics.binned import ece_mce
from mislas.metrics.inputs import ArrayLike, _check_conf_correct, _check_labels, _np
from mislas.spec import CONFIDENCE_QUANTILES, DEFAULT_N_BINS, DEFAULT_SPLIT_RULE, SPLIT_NAMES, SplitRule


def per_class_accuracy(preds: ArrayLike, labels: ArrayLike, num_classes: int) -> np.ndarray:
    """Fraction correct per class (float64, shape [K]); NaN for a class with no eval sample."""
    pr, lb = _np(preds), _np(labels)
    if pr.ndim != 1 or lb.ndim != 1 or pr.shape[0] != lb.shape[0]:
        raise ValueError(f"preds and labels must be 1-D of the same length, got shapes {pr.shape} and {lb.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    lb = lb.astype(np.int64)
    if lb.size and (lb.min() < 0 or lb.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for num_classes = {num_classes}, "
            f"got range [{lb.min()}, {lb.max()}]"
        )
    total = np.bincount(lb, minlength=num_classes).astype(np.float64)
    hits = np.bincount(lb, weights=(pr == lb).astype(np.float64), minlength=num_classes)
    return np.where(total > 0, hits / np.maximum(total, 1.0), np.nan)


def split_accuracy(
    per_class_acc: ArrayLike,
    counts: Sequence[int] | np.ndarray,
    split_rule: SplitRule = DEFAULT_SPLIT_RULE,
) -> dict[str, float | None]:
    """Mean per-class accuracy of each of Many / Medium / Few, in the input's units.

    ``split_rule`` says which classes are in which split (default: the paper's thresholds).
    Per-class means, as the paper averages on balanced eval sets. Classes with NaN accuracy
    (no eval sample) are left out; a split with no class, or none with an eval sample, is
    None (reported as missing), never 0.
    """
    acc = _np(per_class_acc).astype(np.float64)
    cnt = _np(counts)
    if acc.ndim != 1 or acc.shape != cnt.shape:
        raise ValueError(
            f"per_class_acc and counts must be 1-D of the same length, got shapes {acc.shape} and {cnt.shape}"
        )
    splits = split_rule.classes(cnt.tolist())
    out: dict[str, float | None] = {}
    for name in SPLIT_NAMES:
        vals = acc[splits[name]]
        vals = vals[~np.isnan(vals)]
        out[name] = float(vals.mean()) if vals.size else None
    return out


def _split_sample_masks(
    labels: np.ndarray,
    train_counts: Sequence[int] | np.ndarray,
    split_rule: SplitRule,
) -> dict[str, np.ndarray | None]:
    """Per split, the mask of samples whose TRUE label is in it; None for a split with no class."""
    cnt = _np(train_counts)
    if cnt.ndim != 1:
        raise ValueError(f"train_counts must be 1-D, got shape {cnt.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= cnt.shape[0]):
        raise ValueError(
            f"labels must lie in [0, {cnt.shape[0] - 1}] for {cnt.shape[0]} train_counts, "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    splits = split_rule.classes(cnt.tolist())
    out: dict[str, np.ndarray | None] = {}
    for name in SPLIT_NAMES:
        out[name] = np.isin(labels, splits[name]) if splits[name].size else None
    return out


def split_ece(
    confidences: ArrayLike,
    correct: ArrayLike,
    labels: ArrayLike,
    train_counts: Sequence[int] | np.ndarray,
    *,
    n_bins: int = DEFAULT_N_BINS,
    split_rule: SplitRule = DEFAULT_SPLIT_RULE,
) -> dict[str, float | None]:
    """ECE (fraction) of Many / Medium / Few over the samples whose TRUE label is in the split.

    Shows whether tail classes are over-confident where the overall ECE averages it away.
    Same bins as :func:`ece_mce`. Like :func:`split_accuracy`, a split with no class, or
    with no eval sample, is None, never 0.

    Hand-worked example, train counts 500 / 50 / 10 (class 0 Many, 1 Medium, 2 Few): class 0
    has 0.9 right and 0.9 wrong (|1/2 − 0.9| = 0.4); class 1 has 0.7 right (bin (10/15,
    11/15], gap 0.3) and 0.6 right (on the edge 9/15, bin (8/15, 9/15], gap 0.4): ECE 0.35;
    no sample has label 2, so Few is None.

    >>> out = split_ece([0.9, 0.9, 0.7, 0.6], [1, 0, 1, 1], [0, 0, 1, 1], [500, 50, 10])
    >>> round(out["many"], 12), round(out["medium"], 12), out["few"]
    (0.4, 0.35, None)
    """
    conf, corr = _check_conf_correct(confidences, correct)
    lb = _check_labels(labels, conf.shape[0], None)
    masks = _split_sample_masks(lb, train_counts, split_rule)
    out: dict[str, float | None] = {}
    for name, mask in masks.items():
        out[name] = ece_mce(conf[mask], corr[mask], n_bins=n_bins)[0] if mask is not None and mask.any() else None
    return out


def confidence_by_split(
    confidences: ArrayLike,
    labels: ArrayLike,
    train_counts: Sequence[int] | np.ndarray,
    *,
    split_rule: SplitRule = DEFAULT_SPLIT_RULE,
) -> dict[str, dict[str, float] | None]:
    """Summary of the predicted max-probability per split (by TRUE label), for a violin plot.

    Compact on purpose (no raw arrays in results): keys ``q05 q25 q50 q75 q95`` (numpy's
    default linear quantiles), ``mean`` (fractions) and ``count``. None for a split with no
    class or no eval sample.

    Hand-worked example, train counts 500 / 50 (class 0 Many, 1 Medium): class 0 samples have
    confidence 0.9 and 0.7, so the median and mean are 0.8 and q05 = 0.7 + 0.05·0.2 = 0.71;
    there is no Few class.

    >>> out = confidence_by_split([0.9, 0.7, 0.5, 0.6], [0, 0, 1, 1], [500, 50])
    >>> round(out["many"]["q05"], 12), round(out["many"]["q50"], 12), out["many"]["count"], out["few"]
    (0.71, 0.8, 2, None)
    """
    conf = _np(confidences).astype(np.float64)
    if conf.ndim != 1:
        raise ValueError(f"confidences must be 1-D, got shape {conf.shape}")
    if not np.all((conf >= 0.0) & (conf <= 1.0)):
        raise ValueError("confidences must lie in [0, 1]")
    lb = _check_labels(labels, conf.shape[0], None)
    masks = _split_sample_masks(lb, train_counts, split_rule)
    out: dict[str, dict[str, float] | None] = {}
    for name, mask in masks.items():
        if mask is None or not mask.any():
            out[name] = None
            continue
        vals = conf[mask]
        qs = np.quantile(vals, [q for _, q in CONFIDENCE_QUANTILES])
        entry: dict[str, float] = {key: float(v) for (key, _), v in zip(CONFIDENCE_QUANTILES, qs)}
        entry["mean"] = float(vals.mean())
        entry["count"] = int(vals.size)
        out[name] = entry
    return out
