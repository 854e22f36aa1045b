"""Evaluation metrics: top-1 (all / Many / Medium / Few), ECE, MCE, reliability bins, NLL,
classwise / adaptive / per-split ECE, Brier score and per-split confidence quantiles.

Pure functions: torch tensors or numpy arrays in, Python floats / numpy arrays out. Nothing
here keeps state, so the same numbers come out of training, studies and reports.

Units: the low-level functions return fractions in [0, 1]; :func:`evaluate_logits` reports
accuracies, MCE and every ECE variant in percent, as the paper prints ECE, NLL in nats and
the Brier score raw (in [0, 2]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mislas.splits import SPLIT_NAMES, class_splits

ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _torch(x: ArrayLike) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def _check_conf_correct(confidences: ArrayLike, correct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D float64 confidences in [0, 1] and 0/1 correctness of the same length."""
    conf = _np(confidences).astype(np.float64)
    corr = _np(correct)
    if conf.ndim != 1 or corr.ndim != 1:
        raise ValueError(f"confidences and correct must be 1-D, got shapes {conf.shape} and {corr.shape}")
    if conf.shape[0] != corr.shape[0]:
        raise ValueError(
            f"confidences and correct must have the same length, got {conf.shape[0]} and {corr.shape[0]}"
        )
    if conf.size == 0:
        raise ValueError("confidences must be non-empty, got 0 samples")
    if not np.all((conf >= 0.0) & (conf <= 1.0)):  # also rejects NaN
        bad = conf[~((conf >= 0.0) & (conf <= 1.0))][0].item()
        raise ValueError(f"confidences must lie in [0, 1], got {bad!r}")
    corr_f = corr.astype(np.float64)
    if not np.all((corr_f == 0.0) | (corr_f == 1.0)):
        raise ValueError("correct must hold booleans or 0/1 values")
    return conf, corr_f


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


def ece_mce(confidences: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> tuple[float, float]:
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


def reliability_bins(confidences: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> list[dict[str, Any]]:
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


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [N, K], got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape [N] with N = logits.shape[0] = {logits.shape[0]}, got {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("logits must hold at least one sample, got 0")
    k = logits.shape[1]
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"labels must lie in [0, {k - 1}] for K = {k} classes, got range [{lo}, {hi}]")


def nll(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean cross-entropy in nats; half-precision logits are promoted to float32 first."""
    lg, lb = _torch(logits), _torch(labels)
    _check_logits_labels(lg, lb)
    if not lg.dtype.is_floating_point:
        raise ValueError(f"logits must be floating point, got dtype {lg.dtype}")
    if lg.dtype in (torch.float16, torch.bfloat16):
        lg = lg.float()
    per_sample = F.cross_entropy(lg, lb.long().to(lg.device), reduction="none")
    return float(per_sample.double().mean())


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
    many_above: int = 100,
    few_below: int = 20,
    index_ranges: tuple[int, int] | None = None,
) -> dict[str, float | None]:
    """Mean per-class accuracy of each of Many / Medium / Few, in the input's units.

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
    splits = class_splits(cnt.tolist(), many_above=many_above, few_below=few_below, index_ranges=index_ranges)
    out: dict[str, float | None] = {}
    for name in SPLIT_NAMES:
        vals = acc[splits[name]]
        vals = vals[~np.isnan(vals)]
        out[name] = float(vals.mean()) if vals.size else None
    return out


def classifier_weight_norms(weight: ArrayLike) -> np.ndarray:
    """L2 norm of each class row of a [K, D] classifier weight (Fig. 13–14), float64."""
    w = _torch(weight)
    if w.ndim != 2:
        raise ValueError(f"weight must have shape [K, D], got {tuple(w.shape)}")
    return np.asarray(torch.linalg.vector_norm(w.double(), dim=1).cpu().numpy(), dtype=np.float64)


# ---------------------------------------------------------------- more calibration metrics

# Rows per chunk when a metric walks an [N, K] array: bounds the temporaries to ~2**20 cells
# (8 MiB per float64 array), so iNaturalist's 8,142 classes do not need N·K extra memory.
_CHUNK_CELLS = 1 << 20

# Quantile levels of :func:`confidence_by_split`, with their keys.
CONFIDENCE_QUANTILES: tuple[tuple[str, float], ...] = (
    ("q05", 0.05),
    ("q25", 0.25),
    ("q50", 0.50),
    ("q75", 0.75),
    ("q95", 0.95),
)


def _check_labels(labels: ArrayLike, n: int, k: int | None) -> np.ndarray:
    """1-D int64 class indices of length n, in [0, k) unless k is None (checked elsewhere)."""
    lb = _np(labels)
    if lb.ndim != 1 or lb.shape[0] != n:
        raise ValueError(f"labels must have shape [N] with N = {n}, got {lb.shape}")
    if lb.dtype == np.bool_ or not np.issubdtype(lb.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {lb.dtype}")
    lb = lb.astype(np.int64)
    if k is not None and lb.size and (lb.min() < 0 or lb.max() >= k):
        raise ValueError(f"labels must lie in [0, {k - 1}] for K = {k} classes, got range [{lb.min()}, {lb.max()}]")
    return lb


def _check_probs_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """[N, K] float64 probabilities (finite, in [0, 1], rows summing to 1) and int64 labels.

    The row-sum check is there to catch logits passed where probabilities are expected.
    """
    p = _np(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape [N, K], got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("probs must hold at least one sample, got 0")
    p = p.astype(np.float64)
    if not np.all((p >= 0.0) & (p <= 1.0)):  # also rejects NaN
        bad = p[~((p >= 0.0) & (p <= 1.0))][0].item()
        raise ValueError(f"probs must lie in [0, 1], got {bad!r}")
    row_err = np.abs(p.sum(axis=1) - 1.0)
    if row_err.max() > 1e-3:
        i = int(row_err.argmax())
        raise ValueError(f"probs rows must sum to 1 (softmax outputs, not logits), row {i} sums to {p[i].sum()!r}")
    return p, _check_labels(labels, p.shape[0], p.shape[1])


def _classwise_sums(p: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Per (class, bin) summed 1[y = k] and summed p_k, both [K, n_bins] float64.

    Additive over samples, so chunks of rows can be accumulated.
    """
    n, k = p.shape
    flat = _bin_index(p, n_bins) + (np.arange(k, dtype=np.int64) * n_bins)[None, :]
    p_sum = np.bincount(flat.ravel(), weights=p.ravel(), minlength=k * n_bins)
    hit_sum = np.bincount(flat[np.arange(n), labels], minlength=k * n_bins).astype(np.float64)
    return hit_sum.reshape(k, n_bins), p_sum.reshape(k, n_bins)


def _brier_sum(p: np.ndarray, labels: np.ndarray) -> float:
    """Σ_i Σ_k (p_ik − 1[y_i = k])², the un-normalised Brier score of a chunk."""
    d = p.copy()
    d[np.arange(p.shape[0]), labels] -= 1.0
    return float(np.einsum("ij,ij->", d, d))


def _row_chunks(n: int, k: int) -> list[slice]:
    """Row slices of about ``_CHUNK_CELLS`` cells each for an [n, k] array."""
    step = max(1, _CHUNK_CELLS // max(k, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
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


def adaptive_ece(confidences: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
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


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: mean over samples of Σ_k (p_k − 1[y = k])², in [0, 2].

    A proper scoring rule that, unlike ECE, needs no binning. Hand-worked example: rows
    (0.7, 0.2, 0.1) with label 0 and (0.5, 0.5, 0) with label 1 score
    0.3² + 0.2² + 0.1² = 0.14 and 0.5² + 0.5² + 0² = 0.5, mean 0.32.

    >>> round(brier_score([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]], [0, 1]), 12)
    0.32
    """
    p, lb = _check_probs_labels(probs, labels)
    return _brier_sum(p, lb) / int(p.shape[0])


def _split_sample_masks(
    labels: np.ndarray,
    train_counts: Sequence[int] | np.ndarray,
    many_above: int,
    few_below: int,
    index_ranges: tuple[int, int] | None,
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
    splits = class_splits(cnt.tolist(), many_above=many_above, few_below=few_below, index_ranges=index_ranges)
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
    n_bins: int = 15,
    many_above: int = 100,
    few_below: int = 20,
    index_ranges: tuple[int, int] | None = None,
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
    masks = _split_sample_masks(lb, train_counts, many_above, few_below, index_ranges)
    out: dict[str, float | None] = {}
    for name, mask in masks.items():
        out[name] = ece_mce(conf[mask], corr[mask], n_bins=n_bins)[0] if mask is not None and mask.any() else None
    return out


def confidence_by_split(
    confidences: ArrayLike,
    labels: ArrayLike,
    train_counts: Sequence[int] | np.ndarray,
    *,
    many_above: int = 100,
    few_below: int = 20,
    index_ranges: tuple[int, int] | None = None,
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
    masks = _split_sample_masks(lb, train_counts, many_above, few_below, index_ranges)
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


@dataclass(frozen=True, eq=False)
class SampleOutcomes:
    """Per evaluated sample: its label, whether top-1 was right, the top-label confidence and the
    NLL of its label (nats). Kept so that two runs can be compared image by image (a paired
    bootstrap over the test set), which the aggregate metrics cannot do."""

    label: np.ndarray  # int64
    correct: np.ndarray  # bool
    confidence: np.ndarray  # float64 in [0, 1]
    nll: np.ndarray  # float64


@dataclass(frozen=True, eq=False)
class EvalResult:
    """One evaluation: accuracies and every ECE variant in percent, NLL in nats, Brier raw.

    ``acc_*`` and ``ece_*`` are None for a split with no class (``ece_*`` also for a split
    without eval samples). ``ece_many`` etc. are the ECE over the samples whose TRUE label is
    in the split. ``brier`` is the raw multi-class Brier score in [0, 2], not a percentage.
    ``per_class_acc`` is in percent (NaN for a class without eval samples); ``reliability``
    and ``confidence_quantiles`` (per split, see :func:`confidence_by_split`) hold fractions.
    """

    acc: float
    acc_many: float | None
    acc_medium: float | None
    acc_few: float | None
    ece: float
    mce: float
    nll: float
    per_class_acc: np.ndarray
    reliability: list[dict[str, Any]]
    num_samples: int
    classwise_ece: float
    adaptive_ece: float
    brier: float
    ece_many: float | None
    ece_medium: float | None
    ece_few: float | None
    confidence_quantiles: dict[str, dict[str, float] | None]
    samples: SampleOutcomes | None = None

    def summary(self) -> dict[str, float | None]:
        """The scalar metrics as a JSON-serialisable dict (units as in the class docstring)."""
        return {
            "acc": self.acc,
            "acc_many": self.acc_many,
            "acc_medium": self.acc_medium,
            "acc_few": self.acc_few,
            "ece": self.ece,
            "mce": self.mce,
            "nll": self.nll,
            "classwise_ece": self.classwise_ece,
            "adaptive_ece": self.adaptive_ece,
            "brier": self.brier,
            "ece_many": self.ece_many,
            "ece_medium": self.ece_medium,
            "ece_few": self.ece_few,
        }


def _percent(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def evaluate_logits(
    logits: ArrayLike,
    labels: ArrayLike,
    train_counts: Sequence[int] | np.ndarray,
    *,
    n_bins: int = 15,
    many_above: int = 100,
    few_below: int = 20,
    index_ranges: tuple[int, int] | None = None,
) -> EvalResult:
    """All metrics of one eval pass from its logits.

    ``acc`` is plain top-1 over all samples (on a balanced eval set it equals the per-class
    mean); the splits come from the training counts. Confidence is the max softmax; ECE,
    MCE, adaptive and per-split ECE share it. Classwise ECE and Brier use the full softmax,
    computed in float64 a chunk of rows at a time so no extra N×K array is kept.
    """
    lg, lb = _torch(logits), _torch(labels)
    _check_logits_labels(lg, lb)
    if not lg.dtype.is_floating_point:
        raise ValueError(f"logits must be floating point, got dtype {lg.dtype}")
    counts = _np(train_counts)
    k = lg.shape[1]
    if counts.ndim != 1 or counts.shape[0] != k:
        raise ValueError(f"train_counts must have one entry per class (K = {k}), got shape {counts.shape}")
    n_bins = _check_n_bins(n_bins)
    lb = lb.long().to(lg.device)
    work = lg.float() if lg.dtype in (torch.float16, torch.bfloat16) else lg
    conf_t, pred_t = F.softmax(work, dim=1).max(dim=1)
    conf = conf_t.double().cpu().numpy()
    preds = pred_t.cpu().numpy()
    labels_np = lb.cpu().numpy()
    correct = preds == labels_np
    n = int(labels_np.shape[0])

    hits = np.zeros((k, n_bins))
    psum = np.zeros((k, n_bins))
    brier_sum = 0.0
    for rows in _row_chunks(n, k):
        p = F.softmax(work[rows].double(), dim=1).cpu().numpy()
        h, ps = _classwise_sums(p, labels_np[rows], n_bins)
        hits += h
        psum += ps
        brier_sum += _brier_sum(p, labels_np[rows])

    ece, mce = ece_mce(conf, correct, n_bins=n_bins)
    pca = 100.0 * per_class_accuracy(preds, labels_np, k)
    splits = split_accuracy(pca, counts, many_above=many_above, few_below=few_below, index_ranges=index_ranges)
    split_kw: dict[str, Any] = {"many_above": many_above, "few_below": few_below, "index_ranges": index_ranges}
    s_ece = split_ece(conf, correct, labels_np, counts, n_bins=n_bins, **split_kw)
    return EvalResult(
        acc=100.0 * float(correct.mean()),
        acc_many=splits["many"],
        acc_medium=splits["medium"],
        acc_few=splits["few"],
        ece=100.0 * ece,
        mce=100.0 * mce,
        nll=nll(work, lb),
        per_class_acc=pca,
        reliability=reliability_bins(conf, correct, n_bins=n_bins),
        num_samples=n,
        classwise_ece=100.0 * float(np.abs(hits - psum).sum() / (n * k)),
        adaptive_ece=100.0 * adaptive_ece(conf, correct, n_bins=n_bins),
        brier=brier_sum / n,
        ece_many=_percent(s_ece["many"]),
        ece_medium=_percent(s_ece["medium"]),
        ece_few=_percent(s_ece["few"]),
        confidence_quantiles=confidence_by_split(conf, labels_np, counts, **split_kw),
        samples=SampleOutcomes(label=labels_np.astype(np.int64), correct=correct, confidence=conf,
                               nll=_sample_nll(work, lb)),
    )


def _sample_nll(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """−log softmax(logits)[label] per row, in float64, a chunk of rows at a time."""
    n, k = logits.shape
    out = np.empty(n, dtype=np.float64)
    for rows in _row_chunks(n, k):
        lp = F.log_softmax(logits[rows].double(), dim=1)
        out[rows] = (-lp.gather(1, labels[rows].view(-1, 1)).squeeze(1)).cpu().numpy()
    return out
