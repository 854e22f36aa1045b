"""Calibration views per comparison row: reliability bins (Figs. 9–12) and weight norms (Figs. 13–14).

Each row of the method comparison averages a set of trials (its seeds); the same trials are
pooled here, so a figure and the table row it illustrates describe the same runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

RELIABILITY_ROWS = ("CE", "CE+mixup", "cRT", "cRT+mixup", "LWS", "LWS+mixup", "τ-norm", "τ-norm+mixup",
                    "MiSLAS (paper setting)", "MiSLAS (best tuned)")
NORM_PANELS = (
    ("cRT", ("cRT", "cRT+mixup")),
    ("LWS", ("LWS", "LWS+mixup")),
    ("MiSLAS", ("MiSLAS (paper setting)", "MiSLAS (best tuned)")),
)


@dataclass(frozen=True)
class Reliability:
    """Test-split reliability bins pooled over a row's trials: counts summed, accuracy and
    confidence count-weighted (so pooling equals one diagram of all their test images)."""

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


def reliability_curves(trial_ids: dict[str, tuple[str, ...]], reliability: pd.DataFrame) -> tuple[Reliability, ...]:
    """The diagrams of the rows present, in the comparison's order."""
    labels = [label for label in RELIABILITY_ROWS if label in trial_ids]
    curves = (pooled_reliability(label, trial_ids[label], reliability) for label in labels)
    return tuple(c for c in curves if c is not None)


NormPanels = tuple[tuple[str, tuple[WeightNorms, ...]], ...]


def norm_panels(trial_ids: dict[str, tuple[str, ...]], classes: pd.DataFrame) -> NormPanels:
    """Panels of Figs. 13–14: cRT ± mixup, LWS ± mixup, and MiSLAS (paper, best tuned)."""
    panels = []
    for title, labels in NORM_PANELS:
        lines = [weight_norms(lb, trial_ids[lb], classes) for lb in labels if lb in trial_ids]
        present = tuple(line for line in lines if line is not None)
        if present:
            panels.append((title, present))
    return tuple(panels)


def smooth_window(n: int) -> int:
    """The moving-average width used for ``smooth`` (about 5 % of the classes)."""
    return max(1, n // 20)
