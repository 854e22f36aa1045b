"""One evaluation pass: every metric of a head's logits as an :class:`EvalResult`.

:func:`evaluate_logits` also keeps the per-sample outcomes a paired comparison needs;
:func:`classifier_weight_norms` gives the norms of Figs. 13–14.

Units: accuracies, MCE and every ECE variant in percent (as the paper prints ECE), NLL in
nats, the Brier score raw (in [0, 2]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mislas.metrics.binned import _classwise_sums, adaptive_ece, ece_mce, reliability_bins
from mislas.metrics.by_split import confidence_by_split, per_class_accuracy, split_accuracy, split_ece
from mislas.metrics.inputs import ArrayLike, _check_logits_labels, _check_n_bins, _np, _row_chunks, _torch
from mislas.metrics.scores import _brier_sum, _sample_nll, nll
from mislas.spec import DEFAULT_N_BINS, DEFAULT_SPLIT_RULE, SplitRule


def classifier_weight_norms(weight: ArrayLike) -> np.ndarray:
    """L2 norm of each class row of a [K, D] classifier weight (Fig. 13–14), float64."""
    w = _torch(weight)
    if w.ndim != 2:
        raise ValueError(f"weight must have shape [K, D], got {tuple(w.shape)}")
    return np.asarray(torch.linalg.vector_norm(w.double(), dim=1).cpu().numpy(), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class SampleOutcomes:
    """Per evaluated sample: its label, top-1 right or not, the top-label confidence, its NLL (nats).

    Kept so that two runs can be compared image by image (a paired bootstrap over the test set),
    which the aggregate metrics cannot do.
    """

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


def _checked_inputs(logits: ArrayLike, labels: ArrayLike, train_counts: Sequence[int] | np.ndarray
                    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Logits (float32 where they were half precision), int64 labels on their device, and counts."""
    lg, lb = _torch(logits), _torch(labels)
    _check_logits_labels(lg, lb)
    if not lg.dtype.is_floating_point:
        raise ValueError(f"logits must be floating point, got dtype {lg.dtype}")
    counts = _np(train_counts)
    k = lg.shape[1]
    if counts.ndim != 1 or counts.shape[0] != k:
        raise ValueError(f"train_counts must have one entry per class (K = {k}), got shape {counts.shape}")
    work = lg.float() if lg.dtype in (torch.float16, torch.bfloat16) else lg
    return work, lb.long().to(lg.device), counts


def _full_softmax_metrics(work: torch.Tensor, labels: np.ndarray, n_bins: int) -> tuple[float, float]:
    """Classwise ECE (fraction) and the Brier score from the full float64 softmax, a chunk of rows at a time."""
    n, k = work.shape
    hits = np.zeros((k, n_bins))
    psum = np.zeros((k, n_bins))
    brier_sum = 0.0
    for rows in _row_chunks(n, k):
        p = F.softmax(work[rows].double(), dim=1).cpu().numpy()
        h, ps = _classwise_sums(p, labels[rows], n_bins)
        hits += h
        psum += ps
        brier_sum += _brier_sum(p, labels[rows])
    return float(np.abs(hits - psum).sum() / (n * k)), brier_sum / n


def evaluate_logits(
    logits: ArrayLike,
    labels: ArrayLike,
    train_counts: Sequence[int] | np.ndarray,
    *,
    n_bins: int = DEFAULT_N_BINS,
    split_rule: SplitRule = DEFAULT_SPLIT_RULE,
) -> EvalResult:
    """All metrics of one eval pass from its logits.

    ``acc`` is plain top-1 over all samples (on a balanced eval set it equals the per-class
    mean); the splits come from the training counts under ``split_rule`` (for a run:
    ``cfg.eval.split_rule``). Confidence is the max softmax; ECE, MCE, adaptive and per-split
    ECE share it. Classwise ECE and Brier use the full softmax, computed in float64 a chunk of
    rows at a time so no extra N×K array is kept.
    """
    work, lb, counts = _checked_inputs(logits, labels, train_counts)
    n_bins = _check_n_bins(n_bins)
    conf_t, pred_t = F.softmax(work, dim=1).max(dim=1)
    conf = conf_t.double().cpu().numpy()
    preds = pred_t.cpu().numpy()
    labels_np = lb.cpu().numpy()
    classwise, brier = _full_softmax_metrics(work, labels_np, n_bins)
    return result_from_outcomes(labels_np, conf, preds, counts, int(work.shape[1]), n_bins=n_bins,
                                split_rule=split_rule, nll_mean=nll(work, lb), sample_nll=_sample_nll(work, lb),
                                classwise=classwise, brier=brier)


def result_from_outcomes(labels: np.ndarray, conf: np.ndarray, preds: np.ndarray, counts: np.ndarray, k: int, *,
                         n_bins: int, split_rule: SplitRule, nll_mean: float, sample_nll: np.ndarray,
                         classwise: float, brier: float) -> EvalResult:
    """Every field of an :class:`EvalResult` from the per-sample outcomes and the full-softmax sums.

    The one place the fields are assembled: :func:`evaluate_logits` (from the logits) and the
    streaming evaluation (:mod:`mislas.stream_metrics`, from per-batch sums) both end here.
    ``classwise`` and ``brier`` are fractions (classwise ECE, mean Brier), ``nll_mean`` in nats.
    """
    n = int(labels.shape[0])
    correct = preds == labels
    ece, mce = ece_mce(conf, correct, n_bins=n_bins)
    pca = 100.0 * per_class_accuracy(preds, labels, k)
    splits = split_accuracy(pca, counts, split_rule=split_rule)
    s_ece = split_ece(conf, correct, labels, counts, n_bins=n_bins, split_rule=split_rule)
    return EvalResult(
        acc=100.0 * float(correct.mean()),
        acc_many=splits["many"],
        acc_medium=splits["medium"],
        acc_few=splits["few"],
        ece=100.0 * ece,
        mce=100.0 * mce,
        nll=nll_mean,
        per_class_acc=pca,
        reliability=reliability_bins(conf, correct, n_bins=n_bins),
        num_samples=n,
        classwise_ece=100.0 * classwise,
        adaptive_ece=100.0 * adaptive_ece(conf, correct, n_bins=n_bins),
        brier=brier,
        ece_many=_percent(s_ece["many"]),
        ece_medium=_percent(s_ece["medium"]),
        ece_few=_percent(s_ece["few"]),
        confidence_quantiles=confidence_by_split(conf, labels, counts, split_rule=split_rule),
        samples=SampleOutcomes(label=labels.astype(np.int64), correct=correct, confidence=conf, nll=sample_nll),
    )
