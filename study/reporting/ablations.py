"""Hyperparameter ablations of MiSLAS per group, computed from complete trials on validation.

Validation metrics only: test numbers appear in the method comparison, never in what guides a
choice. Only the searched settings (and the paper setting) count: component-ablation rows
(``variant`` set) are left out everywhere here. Stopped-early trials carry partial values and
failed ones none, so both are left out (the study history shows stopped-early trials, marked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mislas.spec import FORMS, related_function
from study.pareto import pareto_mask
from study.reporting.common import COMPLETE, STOPPED, TUNED_PARAMS, GroupKey, complete_trials

MAX_EXACT_LEVELS = 12  # a grid of at most this many round ε values is shown as is; else binned
HEATMAP_BINS = 6


def mislas_trials(group: GroupKey, trials: pd.DataFrame) -> pd.DataFrame:
    """Select the group's searched MiSLAS trials.

    The group's searched MiSLAS trials (every status): the component-ablation variants are
    fixed rows of their own table (study.reporting.components), never part of these analyses.
    """
    return trials[group.mask(trials) & (trials["method"] == "mislas") & trials["variant"].isna()]


# --- ε_1 × ε_K heatmaps -------------------------------------------------------------------------

@dataclass(frozen=True)
class Heatmap:
    """Mean of ``metric`` per (ε_1, ε_K) cell; ``cells`` is long-form (eps_1_bin, eps_k_bin, mean, n)."""

    metric: str
    eps_1_levels: tuple[str, ...]
    eps_k_levels: tuple[str, ...]
    mean: np.ndarray  # [len(eps_1_levels), len(eps_k_levels)], NaN where no trial
    count: np.ndarray
    binned: bool
    cells: pd.DataFrame


def _levels(values: pd.Series) -> tuple[pd.Series, tuple[str, ...], bool]:
    """Exact values as levels when few, else equal-width bins; returns (labels per row, order, binned)."""
    rounded = values.round(6)
    on_grid = bool((rounded == rounded.round(3)).all())  # sampled with a step, not continuous
    if (on_grid and rounded.nunique() <= MAX_EXACT_LEVELS) or rounded.nunique() <= 1:
        order = sorted(rounded.unique())
        names = {v: f"{v:.6g}" for v in order}
        return rounded.map(names), tuple(names[v] for v in order), False
    cut = pd.cut(rounded, bins=HEATMAP_BINS, include_lowest=True)
    low = float(rounded.min())  # pd.cut widens the first edge a little below the data
    for digits in range(3, 10):  # narrow ranges need more digits for distinct labels
        labels = [f"{max(iv.left, low):.{digits}g}–{iv.right:.{digits}g}" for iv in cut.cat.categories]
        if len(set(labels)) == len(labels):
            break
    mapped = cut.cat.rename_categories(labels).astype(str)
    return mapped, tuple(labels), True


def heatmaps(done: pd.DataFrame) -> tuple[Heatmap, ...]:
    """Val-accuracy and val-ECE heatmaps over ε_1 × ε_K from complete MiSLAS trials."""
    data = done.dropna(subset=["eps_1", "eps_k"])
    if data.empty:
        return ()
    e1, e1_order, b1 = _levels(data["eps_1"])
    ek, ek_order, bk = _levels(data["eps_k"])
    framed = data.assign(eps_1_bin=e1.values, eps_k_bin=ek.values)
    out = []
    for metric in ("val_acc", "val_ece"):
        cells = framed.groupby(["eps_1_bin", "eps_k_bin"])[metric].agg(mean="mean", n="count").reset_index()
        grid = cells.pivot(index="eps_1_bin", columns="eps_k_bin", values="mean").reindex(
            index=list(e1_order), columns=list(ek_order))
        counts = cells.pivot(index="eps_1_bin", columns="eps_k_bin", values="n").reindex(
            index=list(e1_order), columns=list(ek_order)).fillna(0)
        out.append(Heatmap(metric, e1_order, ek_order, grid.to_numpy(float), counts.to_numpy(int), b1 or bk, cells))
    return tuple(out)


# --- related function forms (seed Fig. 8) --------------------------------------------------------

@dataclass(frozen=True)
class FormStudy:
    """ε curves of the tried forms over the real class counts, and val metrics per form."""

    counts: np.ndarray  # class counts, descending
    eps_1: float
    eps_k: float
    eps_source: str  # where ε_1, ε_K of the curves come from
    curves: pd.DataFrame  # columns: curve, form, p, rank, count, epsilon
    stats: pd.DataFrame  # index form: n, val_acc_mean, val_acc_std, val_acc_max, val_ece_mean


def class_counts(group_trial_ids: pd.Series, classes: pd.DataFrame) -> np.ndarray:
    """The group's training class counts (descending), from the first trial that has class rows."""
    rows = classes[classes["trial_id"].isin(set(group_trial_ids))]
    if rows.empty:
        return np.array([], dtype=float)
    first = rows["trial_id"].iloc[0]
    return np.sort(rows.loc[rows["trial_id"] == first, "count"].to_numpy(float))[::-1]


def _curve_eps(done: pd.DataFrame) -> tuple[float, float, str]:
    paper = done[done["is_paper_setting"]].dropna(subset=["eps_1", "eps_k"])
    if not paper.empty:
        return float(paper["eps_1"].iloc[0]), float(paper["eps_k"].iloc[0]), "the paper setting"
    best = done.dropna(subset=["eps_1", "eps_k", "val_acc"]).sort_values("val_acc", ascending=False)
    return float(best["eps_1"].iloc[0]), float(best["eps_k"].iloc[0]), "the best trial on val acc"


def _exp_ps(done: pd.DataFrame) -> list[float]:
    """A few representative exponents of the tried exp forms: quantiles of the p tried."""
    ps = done.loc[done["form"] == "exp", "p"].dropna()
    if ps.empty:
        return []
    return sorted({float(round(q, 3)) for q in ps.quantile([0.0, 0.5, 1.0]).to_numpy()})


def form_study(done: pd.DataFrame, counts: np.ndarray) -> FormStudy | None:
    """f(N) curves for each tried form with ε_1, ε_K of the paper setting, plus accuracy per form."""
    if done.empty or counts.size == 0 or done["form"].dropna().empty:
        return None
    eps_1, eps_k, source = _curve_eps(done)
    tried = [f for f in FORMS if (done["form"] == f).any()]
    pieces = []
    for form in tried:
        for p in (_exp_ps(done) if form == "exp" else [None]):
            name = form if p is None else f"exp, p={p:g}"
            eps = related_function(counts, eps_1, eps_k, form, p)
            pieces.append(pd.DataFrame({"curve": name, "form": form, "p": p, "rank": np.arange(counts.size),
                                        "count": counts, "epsilon": eps}))
    stats = done.groupby("form")[["val_acc", "val_ece"]].agg(
        n=("val_acc", "count"), val_acc_mean=("val_acc", "mean"), val_acc_std=("val_acc", "std"),
        val_acc_max=("val_acc", "max"), val_ece_mean=("val_ece", "mean"))
    stats = stats.reindex([f for f in FORMS if f in stats.index])
    return FormStudy(counts, eps_1, eps_k, source, pd.concat(pieces, ignore_index=True), stats)


# --- ΔW-ratio and p effects ---------------------------------------------------------------------

@dataclass(frozen=True)
class Effect:
    """One numeric knob against val acc / ECE: the points and quantile-binned means."""

    param: str
    points: pd.DataFrame  # columns: param value, val_acc, val_ece
    binned: pd.DataFrame  # columns: bin, x_median, n, val_acc_mean, val_ece_mean


def effect(done: pd.DataFrame, param: str, n_bins: int = 5) -> Effect | None:
    """Effect of ``param`` (dw_ratio, or p over exp-form trials): points and binned means."""
    data = done.dropna(subset=[param, "val_acc"])[[param, "val_acc", "val_ece"]]
    if len(data) < 2:
        return None
    bins = pd.qcut(data[param].rank(method="first"), q=min(n_bins, len(data)), labels=False)
    binned = data.assign(bin=bins).groupby("bin").agg(
        x_median=(param, "median"), x_min=(param, "min"), x_max=(param, "max"), n=(param, "count"),
        val_acc_mean=("val_acc", "mean"), val_ece_mean=("val_ece", "mean")).reset_index()
    return Effect(param, data.reset_index(drop=True), binned)


# --- Pareto front ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pareto:
    """Complete (full-budget) MiSLAS trials and which of them are on the val acc / val ECE front."""

    points: pd.DataFrame  # trial_id, val_acc, val_ece, is_paper_setting, on_front, settings, test numbers
    n_excluded: int  # stopped-early trials left out


def pareto(group_mislas: pd.DataFrame) -> Pareto | None:
    """The front over complete trials only; stopped-early trials carry partial values."""
    done = complete_trials(group_mislas).dropna(subset=["val_acc", "val_ece"])
    if done.empty:
        return None
    cols = ["trial_id", "seed", "is_paper_setting", *TUNED_PARAMS, "val_acc", "val_ece", "test_acc", "test_ece"]
    points = done[cols].reset_index(drop=True)
    points["on_front"] = pareto_mask(points["val_acc"].to_numpy(float), points["val_ece"].to_numpy(float))
    return Pareto(points, int((group_mislas["status"] == STOPPED).sum()))


# --- study history -----------------------------------------------------------------------------

def history(group_mislas: pd.DataFrame) -> pd.DataFrame:
    """Objective values in finishing order, with best-so-far over complete trials."""
    data = group_mislas[group_mislas["status"].isin([COMPLETE, STOPPED])].copy()
    if data.empty:
        return pd.DataFrame(columns=["order", "trial_id", "status", "val_acc", "val_ece", "best_acc", "best_ece"])
    data["when"] = data["finished_at"].fillna(data["started_at"])
    data = data.sort_values(["when", "trial_id"], kind="stable").reset_index(drop=True)
    data["order"] = np.arange(1, len(data) + 1)
    complete = data["status"] == COMPLETE
    data["best_acc"] = data["val_acc"].where(complete).cummax().ffill()
    data["best_ece"] = data["val_ece"].where(complete).cummin().ffill()
    return data[["order", "trial_id", "status", "when", "val_acc", "val_ece", "best_acc", "best_ece"]]
