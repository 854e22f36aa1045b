"""Method comparison per group (the seed's Tables 7–9): baselines ± mixup and MiSLAS, on test.

Numbers are means over seeds of complete trials (each seed's trials averaged first, so a seed
run twice does not count twice), std over seeds with ddof=1. The tuned MiSLAS setting is
chosen on validation only: highest mean val accuracy over its seeds, ties by lower val ECE.

Beside each row with temperature-scaled values, a "+TS" row: the same trials after post-hoc
temperature scaling (one T per trial, fitted on val): the same accuracies, the TS ECE and NLL,
and the mean T. cRT and LWS run with the backbone's BN in train mode by default (Kang et al.);
rows with ``shift_bn`` false (``--baseline-bn eval`` or ``both``) are their own "(BN eval)" rows.
Component-ablation rows (``variant`` set) are fixed rows of their own table, never here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pandas as pd

from study.reporting.common import (
    TEST_METRICS,
    TS_COLUMN,
    TUNED_PARAMS,
    GroupKey,
    Metric,
    best_labels,
    complete_trials,
    searched,
    seed_stats,
)
from study.reporting.published import published_for
from study.schema import CONFIRM_VARIANT

BN_METHODS = ("crt", "lws")  # retrain a head on a frozen backbone: its BN mode (shift_bn) matters
BN_EVAL = " (BN eval)"


@dataclass(frozen=True)
class RowSpec:
    """A row of the comparison: which trials it averages."""

    label: str
    method: str
    mixup: bool
    kind: str  # "baseline", "paper" (MiSLAS at Table 6 setting) or "best" (best tuned on val)
    bn_eval: bool = False  # cRT/LWS with the frozen backbone's BN in eval mode (shift_bn false)
    ts: bool = False  # the row's trials after temperature scaling


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
TEMPERATURE = Metric("T", "temperature", False, 2)
TS_VALUE_COLUMNS = ("temperature", *TS_COLUMN.values())
ACCURACY_LABELS = tuple(m.label for m in TEST_METRICS if m.higher_is_better)


def ts_label(label: str) -> str:
    """``cRT+mixup (BN eval)`` -> ``cRT+mixup+TS (BN eval)``; ``CE`` -> ``CE+TS``."""
    head, sep, tail = label.partition(" (")
    return f"{head}+TS{sep}{tail}"


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
    """One group's method comparison table.

    One group's comparison. ``stats`` is indexed by row label, with columns ``n_seeds``,
    ``<Metric>_mean``, ``<Metric>_std`` (for "+TS" rows ECE and NLL are the temperature-scaled
    ones), ``T_mean``, ``T_std`` (the temperature; NaN on uncalibrated rows), ``ts`` and
    ``published_<Metric>``, ``published_source``. ``specs`` gives each row's spec, in order.
    """

    group: GroupKey
    stats: pd.DataFrame
    best: dict[str, tuple[str, ...]]  # metric label -> row labels that hold the best value
    best_setting: BestSetting | None
    trial_ids: dict[str, tuple[str, ...]]  # row label -> the trials averaged
    specs: dict[str, RowSpec]

    @property
    def has_ts(self) -> bool:
        """Whether the table has temperature-scaled ("+TS") rows."""
        return any(spec.ts for spec in self.specs.values())

    def labels(self, *, ts: bool = False) -> tuple[str, ...]:
        """The row labels in table order: the uncalibrated rows, or with ``ts`` the "+TS" rows."""
        return tuple(label for label, spec in self.specs.items() if spec.ts == ts)


def select_best_setting(mislas: pd.DataFrame) -> tuple[BestSetting | None, pd.DataFrame]:
    """Pick the tuned setting on validation; returns it and its trials (all seeds).

    ``mislas`` must hold searched settings only (no component-ablation variant).
    """
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


def confirmed_best(trials: pd.DataFrame, chosen: BestSetting | None,
                   chosen_rows: pd.DataFrame) -> tuple[BestSetting | None, pd.DataFrame]:
    """Return the confirmed best setting and its rows, else the chosen ones.

    The --confirm-best rows (``variant`` best_on_val: the chosen setting rerun on every seed)
    when the study has them, else the searched rows of the chosen setting. The confirmed rows
    are the honest "best tuned" figure: one row per seed, each trained after the choice.
    """
    rows = complete_trials(trials[trials["variant"].astype(object) == CONFIRM_VARIANT])
    if rows.empty:
        return chosen, chosen_rows
    first = rows.iloc[0]
    best = BestSetting(params={name: first[name] for name in SETTING_KEYS},
                       val_acc=chosen.val_acc if chosen else float(rows["val_acc"].mean()),
                       val_ece=chosen.val_ece if chosen else float(rows["val_ece"].mean()),
                       n_seeds=int(rows["seed"].nunique()), n_settings=chosen.n_settings if chosen else 1)
    return best, rows


def _rows_for(spec: RowSpec, done: pd.DataFrame, best_rows: pd.DataFrame) -> pd.DataFrame:
    if spec.kind == "best":
        return best_rows
    rows = done[(done["method"] == spec.method) & (done["mixup"] == spec.mixup)]
    if spec.kind == "paper":
        rows = rows[rows["is_paper_setting"]]
    return rows


def bn_eval_mask(rows: pd.DataFrame) -> pd.Series:
    """Rows whose frozen backbone ran BN in eval mode (``shift_bn`` false; null counts as the default)."""
    return rows["shift_bn"].astype("boolean").eq(False).fillna(False).astype(bool)


def _split_bn(spec: RowSpec, rows: pd.DataFrame) -> Iterator[tuple[RowSpec, pd.DataFrame]]:
    """cRT/LWS: the default (BN train) row, then a "(BN eval)" row when such trials exist."""
    if spec.method not in BN_METHODS:
        yield spec, rows
        return
    evaluated = bn_eval_mask(rows)
    yield spec, rows[~evaluated]
    if evaluated.any():
        yield replace(spec, label=spec.label + BN_EVAL, bn_eval=True), rows[evaluated]


def ts_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The trials that carry temperature-scaling values (none in a study older than them)."""
    return rows[rows[list(TS_VALUE_COLUMNS)].notna().any(axis=1)]


def _stats_row(spec: RowSpec, group: GroupKey, rows: pd.DataFrame) -> dict[str, object]:
    out: dict[str, object] = {"label": spec.label, "ts": spec.ts,
                              **seed_stats(rows, TEST_METRICS, TS_COLUMN if spec.ts else None)}
    if spec.ts:
        temperature = seed_stats(rows, (TEMPERATURE,))
        out["T_mean"], out["T_std"] = temperature["T_mean"], temperature["T_std"]
    else:
        out["T_mean"] = out["T_std"] = math.nan
    own = spec.kind != "best" and not spec.ts and not spec.bn_eval  # published figures: the default rows
    published = published_for(group, spec.method, spec.mixup) if own else None
    for label, attr in PUBLISHED_FIELDS.items():
        out[f"published_{label}"] = getattr(published, attr) if published else math.nan
    out["published_NLL"] = math.nan  # never published
    out["published_source"] = published.source if published else ""
    return out


def comparison_table(group: GroupKey, trials: pd.DataFrame) -> ComparisonTable:
    """The comparison for one group; rows with neither our trials nor published figures are left out."""
    done = complete_trials(searched(trials[group.mask(trials)]))
    mislas = done[done["method"] == "mislas"]
    best_setting, best_rows = select_best_setting(mislas)
    best_setting, best_rows = confirmed_best(trials[group.mask(trials)], best_setting, best_rows)
    records: list[dict[str, object]] = []
    ids: dict[str, tuple[str, ...]] = {}
    specs: dict[str, RowSpec] = {}
    for base in ROW_SPECS:
        for spec, rows in _split_bn(base, _rows_for(base, done, best_rows)):
            record = _stats_row(spec, group, rows)
            if rows.empty and not record["published_source"]:
                continue
            records.append(record)
            ids[spec.label], specs[spec.label] = tuple(rows["trial_id"].astype(str)), spec
            scaled = ts_rows(rows)
            if not scaled.empty:
                ts_spec = replace(spec, label=ts_label(spec.label), ts=True)
                records.append(_stats_row(ts_spec, group, scaled))
                ids[ts_spec.label], specs[ts_spec.label] = tuple(scaled["trial_id"].astype(str)), ts_spec
    stats = pd.DataFrame.from_records(records).set_index("label") if records else pd.DataFrame()
    # Accuracy is the same with and without T: only the uncalibrated rows compete for it.
    uncalibrated = [label for label, spec in specs.items() if not spec.ts]
    best = best_labels(stats, TEST_METRICS, dict.fromkeys(ACCURACY_LABELS, uncalibrated)) if records else {}
    return ComparisonTable(group, stats, best, best_setting, ids, specs)
