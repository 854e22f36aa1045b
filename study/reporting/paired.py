"""Paired differences against a reference row (MiSLAS), by seed and by a bootstrap over test images.

Two rows of a study that share a seed share their Stage 1's seed, their data split and their
test images, so their difference is measured far more precisely than the two means' spreads
suggest. For each row against the reference, per metric (test accuracy, ECE, NLL):

* **by seed**: the difference on each seed both rows ran, its mean and a 95 % Student-t
  interval over those seeds (none for one seed);
* **bootstrap over test images**: B resamples of the test images (the same images for both
  rows and every seed, so the pairing is kept); per resample the difference of the two rows'
  metric on the resampled images, averaged over the seeds; the 2.5 and 97.5 percentiles. It
  needs the rows' ``predictions.parquet`` (kept for fixed rows and the Table 6 setting).

Positive means the row is higher than the reference (for ECE and NLL, worse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mislas.spec import DEFAULT_N_BINS

N_BOOT = 1000
BOOT_SEED = 0
# two-sided 95 % Student-t quantiles by degrees of freedom (seeds − 1); 1.96 beyond the table
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}


@dataclass(frozen=True)
class PairedMetric:
    """One metric: the trials column, its predictions-level statistic and its display."""

    label: str
    column: str
    digits: int


PAIRED_METRICS = (PairedMetric("Acc", "test_acc", 2), PairedMetric("ECE", "test_ece", 2),
                  PairedMetric("NLL", "test_nll", 3))


@dataclass(frozen=True)
class PairedTable:
    """Paired differences of each row against a reference row.

    Rows against ``reference``: ``stats`` indexed by row label with ``n_seeds`` and, per metric
    label M, ``M_mean``, ``M_lo``, ``M_hi`` (by seed) and ``M_boot_lo``, ``M_boot_hi``.
    """

    reference: str
    stats: pd.DataFrame
    n_boot: int
    n_bins: int


def t_quantile(dof: int) -> float:
    """The 97.5 % quantile of Student's t with ``dof`` degrees of freedom (table; nearest lower entry)."""
    if dof < 1:
        return math.nan
    return _T975[max(k for k in _T975 if k <= dof)] if dof <= 30 else 1.96


def seed_interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t interval of per-seed differences (NaN interval for fewer than two seeds)."""
    values = np.asarray(diffs, dtype=float)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan, math.nan
    half = t_quantile(values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean, mean - half, mean + half


def resampled_metrics(correct: np.ndarray, confidence: np.ndarray, nll: np.ndarray, idx: np.ndarray,
                      n_bins: int) -> dict[str, np.ndarray]:
    """Compute accuracy, ECE and NLL of each bootstrap resample.

    Accuracy (%), ECE (%, equal-width bins (lo, hi], a confidence of 0 in bin 0) and mean NLL
    of each resample (rows of ``idx``), as the study's metrics define them.
    """
    b, n = idx.shape
    corr = correct[idx].astype(np.float64)
    conf = confidence[idx].astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    flat = (np.arange(b)[:, None] * n_bins + bins).ravel()
    gap = np.bincount(flat, weights=(corr - conf).ravel(), minlength=b * n_bins).reshape(b, n_bins)
    return {"test_acc": 100.0 * corr.mean(axis=1), "test_ece": 100.0 * np.abs(gap).sum(axis=1) / n,
            "test_nll": nll[idx].astype(np.float64).mean(axis=1)}


def _by_seed(trials: pd.DataFrame, ids: Sequence[str]) -> dict[int, pd.Series]:
    rows = trials[trials["trial_id"].isin(list(ids))]
    return {int(r["seed"]): r for _, r in rows.sort_values("trial_id").iterrows()}


def _predictions(predictions: pd.DataFrame, trial_id: str) -> pd.DataFrame | None:
    rows = predictions[(predictions["trial_id"] == trial_id) & (predictions["eval_split"] == "test")]
    return None if rows.empty else rows.sort_values("sample")


def paired_table(trials: pd.DataFrame, predictions: pd.DataFrame, row_ids: Mapping[str, Sequence[str]],
                 reference: str, *, n_boot: int = N_BOOT, n_bins: int = DEFAULT_N_BINS) -> PairedTable | None:
    """Compare every row against the reference row, by seed and by bootstrap.

    Every row of ``row_ids`` (label -> its trials) but ``reference`` against ``reference``;
    None when the reference has no trials.
    """
    ref = _by_seed(trials, row_ids.get(reference, ()))
    if not ref:
        return None
    n_test = max((len(p) for tid in (r["trial_id"] for r in ref.values())
                  if (p := _predictions(predictions, str(tid))) is not None), default=0)
    idx = np.random.default_rng(BOOT_SEED).integers(0, n_test, size=(n_boot, n_test)) if n_test else None
    records = []
    for label, ids in row_ids.items():
        if label == reference:
            continue
        mine = _by_seed(trials, ids)
        seeds = sorted(set(mine) & set(ref))
        if not seeds:
            continue
        record: dict[str, object] = {"label": label, "n_seeds": len(seeds)}
        for m in PAIRED_METRICS:
            diffs = [float(mine[s][m.column]) - float(ref[s][m.column]) for s in seeds]
            record[f"{m.label}_mean"], record[f"{m.label}_lo"], record[f"{m.label}_hi"] = seed_interval(diffs)
        record.update(_bootstrap(predictions, mine, ref, seeds, idx, n_bins))
        records.append(record)
    if not records:
        return None
    return PairedTable(reference, pd.DataFrame.from_records(records).set_index("label"), n_boot, n_bins)


def _bootstrap(predictions: pd.DataFrame, mine: Mapping[int, pd.Series], ref: Mapping[int, pd.Series],
               seeds: Sequence[int], idx: np.ndarray | None, n_bins: int) -> dict[str, float]:
    """The bootstrap interval per metric, NaN when a seed of either row has no predictions."""
    out = {f"{m.label}_boot_{end}": math.nan for m in PAIRED_METRICS for end in ("lo", "hi")}
    if idx is None:
        return out
    total = {m.column: np.zeros(idx.shape[0]) for m in PAIRED_METRICS}
    for s in seeds:
        a, b = _predictions(predictions, str(mine[s]["trial_id"])), _predictions(predictions, str(ref[s]["trial_id"]))
        if a is None or b is None or len(a) != idx.shape[1] or len(b) != idx.shape[1]:
            return out
        ma = resampled_metrics(a["correct"].to_numpy(), a["confidence"].to_numpy(), a["nll"].to_numpy(), idx, n_bins)
        mb = resampled_metrics(b["correct"].to_numpy(), b["confidence"].to_numpy(), b["nll"].to_numpy(), idx, n_bins)
        for m in PAIRED_METRICS:
            total[m.column] += ma[m.column] - mb[m.column]
    for m in PAIRED_METRICS:
        mean = total[m.column] / len(seeds)
        out[f"{m.label}_boot_lo"], out[f"{m.label}_boot_hi"] = (float(v) for v in np.percentile(mean, [2.5, 97.5]))
    return out
