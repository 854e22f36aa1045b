"""Method comparison per group (the seed's Tables 7–9): baselines ± mixup and MiSLAS, on test.

Numbers are means over seeds of complete trials (each seed's trials averaged first, so a seed
run twice does not count twice), std over seeds with ddof=1. The tuned MiSLAS setting is
chosen on validation only: highest mean val accuracy over its seeds, ties by lower val ECE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from study.reporting.common import TEST_METRICS, TUNED_PARAMS, GroupKey, complete_trials
from study.reporting.published import published_for


@dataclass(frozen=True)
class RowSpec:
    """A row of the comparison: which trials it averages."""

    label: str
    method: str
    mixup: bool
    kind: str  # "baseline", "paper" (MiSLAS at Table 6 setting) or "best" (best tuned on val)


ROW_SPECS = (
    RowSpec("CE", "ce", False, "baseline"),
    RowSpec("CE+mixup", "ce", True, "baseline"),
    RowSpec("cRT", "crt", False, "baseline"),
    RowSpec("cRT+mixup", "crt", True, "baseline"),
    RowSpec("LWS", "lws", False, "baseline"),
    RowSpec("LWS+mixup", "lws", True, "baseline"),
    RowSpec("τ-norm", "tau_norm", False, "baseline"),
    RowSpec("τ-norm+mixup", "tau_norm", True, "baseline"),
    RowSpec("MiSLAS (paper setting)", "mislas", True, "paper"),
    RowSpec("MiSLAS (best tuned)", "mislas", True, "best"),
)
PUBLISHED_FIELDS = {"Many": "many", "Medium": "medium", "Few": "few", "All": "all", "ECE": "ece"}
SETTING_KEYS = ("mixup", *TUNED_PARAMS)


@dataclass(frozen=True)
class BestSetting:
    """The MiSLAS setting chosen on validation, with the numbers it was chosen by."""

    params: dict[str, object]
    val_acc: float
    val_ece: float
    n_seeds: int
    n_settings: int  # how many settings competed


@dataclass(frozen=True)
class ComparisonTable:
    """One group's comparison. ``stats`` is indexed by row label, with columns
    ``n_seeds``, ``<Metric>_mean``, ``<Metric>_std`` and ``published_<Metric>``, ``published_source``."""

    group: GroupKey
    stats: pd.DataFrame
    best: dict[str, tuple[str, ...]]  # metric label -> row labels that hold the best value
    best_setting: BestSetting | None
    trial_ids: dict[str, tuple[str, ...]]  # row label -> the trials averaged


def select_best_setting(mislas: pd.DataFrame) -> tuple[BestSetting | None, pd.DataFrame]:
    """Pick the tuned setting on validation; returns it and its trials (all seeds)."""
    scored = mislas.dropna(subset=["val_acc"])
    if scored.empty:
        return None, scored.iloc[0:0]
    keyed = scored.assign(_setting=scored.groupby(list(SETTING_KEYS), dropna=False).ngroup())
    per_setting = keyed.groupby("_setting").agg(
        val_acc=("val_acc", "mean"), val_ece=("val_ece", "mean"), n_seeds=("seed", "nunique")
    )
    ranked = per_setting.sort_values(["val_acc", "val_ece"], ascending=[False, True], kind="stable")
    chosen = ranked.index[0]
    rows = keyed[keyed["_setting"] == chosen].drop(columns="_setting")
    first = rows.iloc[0]
    best = BestSetting(
        params={name: first[name] for name in SETTING_KEYS},
        val_acc=float(ranked.iloc[0]["val_acc"]),
        val_ece=float(ranked.iloc[0]["val_ece"]),
        n_seeds=int(ranked.iloc[0]["n_seeds"]),
        n_settings=len(ranked),
    )
    return best, rows


def _rows_for(spec: RowSpec, done: pd.DataFrame, best_rows: pd.DataFrame) -> pd.DataFrame:
    if spec.kind == "best":
        return best_rows
    rows = done[(done["method"] == spec.method) & (done["mixup"] == spec.mixup)]
    if spec.kind == "paper":
        rows = rows[rows["is_paper_setting"]]
    return rows


def _stats_row(spec: RowSpec, group: GroupKey, rows: pd.DataFrame) -> dict[str, object]:
    columns = [m.column for m in TEST_METRICS]
    per_seed = rows.groupby("seed", dropna=False)[columns].mean()
    out: dict[str, object] = {"label": spec.label, "n_seeds": int(len(per_seed))}
    for metric in TEST_METRICS:
        values = per_seed[metric.column]
        out[f"{metric.label}_mean"] = float(values.mean()) if len(values) else math.nan
        out[f"{metric.label}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    published = None if spec.kind == "best" else published_for(group, spec.method, spec.mixup)
    for label, attr in PUBLISHED_FIELDS.items():
        out[f"published_{label}"] = getattr(published, attr) if published else math.nan
    out["published_NLL"] = math.nan  # never published
    out["published_source"] = published.source if published else ""
    return out


def _best_labels(stats: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """Per metric, the rows of ours holding the best mean (highest acc, lowest ECE/NLL)."""
    best: dict[str, tuple[str, ...]] = {}
    for metric in TEST_METRICS:
        values = stats[f"{metric.label}_mean"].dropna()
        if values.empty:
            best[metric.label] = ()
            continue
        target = values.max() if metric.higher_is_better else values.min()
        best[metric.label] = tuple(values.index[values == target])
    return best


def comparison_table(group: GroupKey, trials: pd.DataFrame) -> ComparisonTable:
    """The comparison for one group; rows with neither our trials nor published figures are left out."""
    done = complete_trials(trials[group.mask(trials)])
    mislas = done[done["method"] == "mislas"]
    best_setting, best_rows = select_best_setting(mislas)
    records, ids = [], {}
    for spec in ROW_SPECS:
        rows = _rows_for(spec, done, best_rows)
        record = _stats_row(spec, group, rows)
        if rows.empty and not record["published_source"]:
            continue
        records.append(record)
        ids[spec.label] = tuple(rows["trial_id"].astype(str))
    stats = pd.DataFrame.from_records(records).set_index("label") if records else pd.DataFrame()
    best = _best_labels(stats) if records else {}
    return ComparisonTable(group, stats, best, best_setting, ids)
