"""Evaluation metrics: top-1 (all / Many / Medium / Few), ECE, MCE, reliability bins, NLL.

Pure functions: torch tensors or numpy arrays in, Python floats / numpy arrays out. Nothing
here keeps state, so the same numbers come out of training, studies and reports.

Units: the low-level functions return fractions in [0, 1]; :func:`evaluate_logits` reports
accuracies, ECE and MCE in percent, as the paper prints them, and NLL in nats.
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
    upper = np.arange(1, n_bins + 1, dtype=np.float64) / n_bins
    # First bin whose upper edge is >= conf: conf == edge stays in the lower bin.
    idx = np.minimum(np.searchsorted(upper, conf, side="left"), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    acc_sum = np.bincount(idx, weights=corr_f, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    return count, acc_sum, conf_sum, upper, int(conf.size)


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
    splits = class_splits(cnt, many_above=many_above, few_below=few_below, index_ranges=index_ranges)
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
    return torch.linalg.vector_norm(w.double(), dim=1).cpu().numpy()


@dataclass(frozen=True, eq=False)
class EvalResult:
    """One evaluation: accuracies, ECE and MCE in percent, NLL in nats.

    ``acc_*`` is None for a split with no class. ``per_class_acc`` is in percent (NaN for a
    class without eval samples); ``reliability`` holds fractions (see :func:`reliability_bins`).
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

    def summary(self) -> dict[str, float | None]:
        """The scalar metrics as a JSON-serialisable dict."""
        return {
            "acc": self.acc,
            "acc_many": self.acc_many,
            "acc_medium": self.acc_medium,
            "acc_few": self.acc_few,
            "ece": self.ece,
            "mce": self.mce,
            "nll": self.nll,
        }


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
    mean); the splits come from the training counts. Confidence is the max softmax.
    """
    lg, lb = _torch(logits), _torch(labels)
    _check_logits_labels(lg, lb)
    if not lg.dtype.is_floating_point:
        raise ValueError(f"logits must be floating point, got dtype {lg.dtype}")
    counts = _np(train_counts)
    k = lg.shape[1]
    if counts.ndim != 1 or counts.shape[0] != k:
        raise ValueError(f"train_counts must have one entry per class (K = {k}), got shape {counts.shape}")
    lb = lb.long().to(lg.device)
    work = lg.float() if lg.dtype in (torch.float16, torch.bfloat16) else lg
    conf_t, pred_t = F.softmax(work, dim=1).max(dim=1)
    conf = conf_t.double().cpu().numpy()
    preds = pred_t.cpu().numpy()
    labels_np = lb.cpu().numpy()
    correct = preds == labels_np

    ece, mce = ece_mce(conf, correct, n_bins=n_bins)
    pca = 100.0 * per_class_accuracy(preds, labels_np, k)
    splits = split_accuracy(pca, counts, many_above=many_above, few_below=few_below, index_ranges=index_ranges)
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
        num_samples=int(labels_np.shape[0]),
    )
