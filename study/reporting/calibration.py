"""Calibration figures and tables for the rows of the method comparison.

Calibration views per comparison row: reliability bins (Figs. 9–12), weight norms (Figs. 13–14),
the calibration metrics (classwise / adaptive ECE, Brier, ECE per class split) and the
distribution of the top-label confidence per class split (the paper's violin plot, as boxes).

Each row of the method comparison averages a set of trials (its seeds); the same trials are
pooled here, so a figure and the table row it illustrates describe the same runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mislas.spec import CONFIDENCE_QUANTILES, SPLIT_NAMES
from study.reporting.common import CALIBRATION_METRICS, TS_COLUMN, best_labels, seed_stats
from study.reporting.comparison import ComparisonTable

# Figs. 13–14: one panel per method, the rows of that method (± mixup, BN modes) as lines.
NORM_PANELS = (("cRT", ("crt",)), ("LWS", ("lws",)), ("MiSLAS", ("mislas",)))
CLASS_SPLITS = SPLIT_NAMES
QUANTILES = tuple(key for key, _ in CONFIDENCE_QUANTILES)


@dataclass(frozen=True)
class Reliability:
    """Reliability diagram of one comparison row.

    Test-split reliability bins pooled over a row's trials: counts summed, accuracy and
    confidence count-weighted (so pooling equals one diagram of all their test images).
    """

    label: str
    n_trials: int
    bins: pd.DataFrame  # bin, lower, upper, count, accuracy, confidence (NaN where empty)
    ece: float  # percent, from the pooled bins


def pooled_reliability(label: str, trial_ids: tuple[str, ...], reliability: pd.DataFrame) -> Reliability | None:
    """Pool the test bins of ``trial_ids``; None when none of them has reliability rows."""
    rows = reliability[(reliability["eval_split"] == "test") & reliability["trial_id"].isin(set(trial_ids))]
    if rows.empty:
        return None
    count = rows["count"].astype(float)
    weighted = rows.assign(
        n=count, acc_n=rows["accuracy"].astype(float).fillna(0.0) * count,
        conf_n=rows["confidence"].astype(float).fillna(0.0) * count)
    bins = weighted.groupby("bin").agg(lower=("lower", "first"), upper=("upper", "first"), count=("n", "sum"),
                                       acc_n=("acc_n", "sum"), conf_n=("conf_n", "sum")).reset_index()
    nonempty = bins["count"] > 0
    bins["accuracy"] = (bins["acc_n"] / bins["count"]).where(nonempty)
    bins["confidence"] = (bins["conf_n"] / bins["count"]).where(nonempty)
    total = bins["count"].sum()
    gaps = (bins["accuracy"] - bins["confidence"]).abs().fillna(0.0) * bins["count"]
    ece = float(100.0 * gaps.sum() / total) if total > 0 else float("nan")
    out = bins[["bin", "lower", "upper", "count", "accuracy", "confidence"]].astype({"count": int})
    return Reliability(label, rows["trial_id"].nunique(), out, ece)


@dataclass(frozen=True)
class WeightNorms:
    """Mean ‖w_j‖ per class rank (0 = most training images) over a row's trials."""

    label: str
    n_trials: int
    frame: pd.DataFrame  # rank, count, weight_norm, smooth


def weight_norms(label: str, trial_ids: tuple[str, ...], classes: pd.DataFrame) -> WeightNorms | None:
    """Weight norms against class rank by count, with a moving average as the paper's dark line."""
    rows = classes[classes["trial_id"].isin(set(trial_ids))].dropna(subset=["weight_norm"])
    if rows.empty:
        return None
    frame = rows.groupby("rank").agg(count=("count", "first"), weight_norm=("weight_norm", "mean")).reset_index()
    frame = frame.sort_values("rank").reset_index(drop=True)
    frame["smooth"] = frame["weight_norm"].rolling(smooth_window(len(frame)), center=True, min_periods=1).mean()
    return WeightNorms(label, rows["trial_id"].nunique(), frame)


def reliability_curves(table: ComparisonTable, reliability: pd.DataFrame) -> tuple[Reliability, ...]:
    """The diagrams of the (uncalibrated) rows present, in the comparison's order."""
    curves = (pooled_reliability(label, table.trial_ids[label], reliability) for label in table.labels())
    return tuple(c for c in curves if c is not None)


NormPanels = tuple[tuple[str, tuple[WeightNorms, ...]], ...]


def norm_panels(table: ComparisonTable, classes: pd.DataFrame) -> NormPanels:
    """Panels of Figs. 13–14: cRT ± mixup, LWS ± mixup (each BN mode run), and MiSLAS (paper, best tuned)."""
    panels = []
    for title, methods in NORM_PANELS:
        labels = [lb for lb in table.labels() if table.specs[lb].method in methods]
        lines = [weight_norms(lb, table.trial_ids[lb], classes) for lb in labels]
        present = tuple(line for line in lines if line is not None)
        if present:
            panels.append((title, present))
    return tuple(panels)


# --- calibration metrics per row -----------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationMetrics:
    """Test-split calibration metrics per comparison row.

    Test-split calibration metrics per comparison row, mean over seeds (each seed's trials
    averaged first). "+TS" rows hold the temperature-scaled value where the study records one
    (ECE, classwise / adaptive ECE, Brier) and NaN otherwise (ECE per class split).
    """

    stats: pd.DataFrame  # index: row label; n_seeds, <Metric>_mean, <Metric>_std per CALIBRATION_METRICS
    best: dict[str, tuple[str, ...]]  # metric label -> rows with the lowest mean

    @property
    def empty(self) -> bool:
        """No row has any metric beyond the ECE of the method comparison (a study older than them)."""
        cols = [f"{m.label}_mean" for m in CALIBRATION_METRICS if m.column != "test_ece"]
        return self.stats.empty or bool(self.stats[cols].isna().all().all())


def calibration_metrics(table: ComparisonTable, trials: pd.DataFrame) -> CalibrationMetrics:
    """The metrics of every row of ``table`` from the same trials the row averages."""
    records = []
    for label, spec in table.specs.items():
        rows = trials[trials["trial_id"].isin(set(table.trial_ids[label]))]
        if spec.ts:  # no TS column: the metric was not recorded after scaling
            rows = rows.assign(**{f"_none_{m.column}": math.nan for m in CALIBRATION_METRICS})
            column_of = {m.column: TS_COLUMN.get(m.column, f"_none_{m.column}") for m in CALIBRATION_METRICS}
        else:
            column_of = {}
        records.append({"label": label, **seed_stats(rows, CALIBRATION_METRICS, column_of)})
    if not records:
        return CalibrationMetrics(pd.DataFrame(), {})
    stats = pd.DataFrame.from_records(records).set_index("label")
    return CalibrationMetrics(stats, best_labels(stats, CALIBRATION_METRICS))


# --- top-label confidence per class split ----------------------------------------------------------

@dataclass(frozen=True)
class ConfidenceBoxes:
    """Test-split top-label confidence statistics per class split for one comparison row.

    The test-split top-label confidence over the samples whose true class is Many / Medium /
    Few, for one comparison row: count-weighted means over the row's trials of each stored
    statistic (exact for the mean; for the quantiles the average of the trials' quantiles).
    """

    label: str
    n_trials: int
    stats: pd.DataFrame  # index class_split (those present, in order): count, mean, q05, q25, q50, q75, q95
    accuracy: dict[str, float]  # class split -> the row's test top-1 (%), mean over seeds

    def bxp_stats(self) -> list[dict[str, object]]:
        """Matplotlib ``Axes.bxp`` dicts, whiskers at the 5th / 95th percentiles, no fliers."""
        return [{"label": split, "med": row["q50"], "q1": row["q25"], "q3": row["q75"], "whislo": row["q05"],
                 "whishi": row["q95"], "mean": row["mean"], "fliers": []} for split, row in self.stats.iterrows()]


def pooled_confidence(label: str, trial_ids: tuple[str, ...], confidence: pd.DataFrame,
                      accuracy: dict[str, float]) -> ConfidenceBoxes | None:
    """Pool the test confidence rows of ``trial_ids``; None when none of them has any."""
    rows = confidence[(confidence["eval_split"] == "test") & confidence["trial_id"].isin(set(trial_ids))]
    rows = rows.dropna(subset=["q50"])
    if rows.empty:
        return None
    weight = pd.to_numeric(rows["count"], errors="coerce").astype(float).fillna(1.0)
    values = rows[["mean", *QUANTILES]].astype(float)
    weighted = values.mul(weight, axis=0).assign(class_split=rows["class_split"].to_numpy(), _w=weight)
    sums = weighted.groupby("class_split").sum()
    stats = sums[["mean", *QUANTILES]].div(sums["_w"].where(sums["_w"] > 0), axis=0)
    stats.insert(0, "count", rows.groupby("class_split")["count"].sum())
    stats = stats.reindex([s for s in CLASS_SPLITS if s in stats.index])
    return ConfidenceBoxes(label, rows["trial_id"].nunique(), stats, accuracy)


CONFIDENCE_KINDS = ("baseline", "paper")  # the baselines present and MiSLAS at the paper setting


def confidence_boxes(table: ComparisonTable, confidence: pd.DataFrame) -> tuple[ConfidenceBoxes, ...]:
    """One entry per uncalibrated baseline row and the MiSLAS paper-setting row that has confidence rows."""
    out = []
    for label in table.labels():
        if table.specs[label].kind not in CONFIDENCE_KINDS:
            continue
        row = table.stats.loc[label]
        accuracy = {s: float(row[f"{s.capitalize()}_mean"]) for s in CLASS_SPLITS}
        boxes = pooled_confidence(label, table.trial_ids[label], confidence,
                                  {s: a for s, a in accuracy.items() if not np.isnan(a)})
        if boxes is not None:
            out.append(boxes)
    return tuple(out)


def smooth_window(n: int) -> int:
    """The moving-average width used for ``smooth`` (about 5 % of the classes)."""
    return max(1, n // 20)
