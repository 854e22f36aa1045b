"""Vocabulary shared by the report's compute modules: groups, statuses, metric columns.

The names the library shares (forms, methods, the split rule) come from the torch-free
:mod:`mislas.spec`; ``FORMS`` is re-exported here.

A study may hold several data sets, imbalance factors and backbones; every table and figure of
the report is made per group (dataset, β, arch), because numbers across groups do not compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mislas.spec import FORMS as FORMS  # re-exported: the name the report used
from study import schema

COMPLETE = schema.COMPLETE
STOPPED = schema.STOPPED_EARLY
FAILED = schema.FAILED
DIVERGED = schema.DIVERGED
KNOWN_STATUSES = schema.STATUSES

GROUP_COLS = ("dataset", "imb_factor", "arch")
# The Stage-2 knobs the study searches (trials.parquet columns); a MiSLAS "setting" is one
# combination of these (plus the Stage-1 mixup flag).
TUNED_PARAMS = tuple(schema.SETTING_COLUMNS)


@dataclass(frozen=True)
class Metric:
    """One column of the method comparison: its label, trials.parquet column and direction."""

    label: str
    column: str
    higher_is_better: bool
    decimals: int


TEST_METRICS = (
    Metric("Many", "test_acc_many", True, 2),
    Metric("Medium", "test_acc_medium", True, 2),
    Metric("Few", "test_acc_few", True, 2),
    Metric("All", "test_acc", True, 2),
    Metric("ECE", "test_ece", False, 2),
    Metric("NLL", "test_nll", False, 3),
)
# The same metric after post-hoc temperature scaling (one T per trial, fitted on val NLL): the
# trials.parquet column of each test metric that has one (accuracy does not change with T).
TS_COLUMN = {f"test_{m}": f"test_{m}_ts" for m in schema.TS_METRICS}
# The calibration section's metrics per method row (test split): ECE variants in percent, Brier raw.
CALIBRATION_METRICS = (
    Metric("ECE", "test_ece", False, 2),
    Metric("classwise ECE", "test_classwise_ece", False, 2),
    Metric("adaptive ECE", "test_adaptive_ece", False, 2),
    Metric("Brier", "test_brier", False, 3),
    Metric("ECE Many", "test_ece_many", False, 2),
    Metric("ECE Medium", "test_ece_medium", False, 2),
    Metric("ECE Few", "test_ece_few", False, 2),
)


@dataclass(frozen=True, order=True)
class GroupKey:
    """One (dataset, β, arch) combination; β is None for list data sets."""

    dataset: str
    imb_factor: float | None
    arch: str

    @property
    def label(self) -> str:
        """Human-readable name, e.g. ``cifar10_lt, β=100, resnet32``."""
        beta = "" if self.imb_factor is None else f", β={self.imb_factor:g}"
        return f"{self.dataset}{beta}, {self.arch}"

    @property
    def slug(self) -> str:
        """File-name-safe name, e.g. ``cifar10_lt-b100-resnet32``."""
        beta = "" if self.imb_factor is None else f"-b{self.imb_factor:g}"
        return f"{self.dataset}{beta}-{self.arch}".replace(".", "p").replace("/", "_")

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        """Boolean mask of the rows of ``frame`` (a trials table) that belong to this group."""
        beta = frame["imb_factor"].astype(float)
        if self.imb_factor is None:
            beta_ok = beta.isna()
        else:
            beta_ok = pd.Series(np.isclose(beta.fillna(-1.0), self.imb_factor), index=frame.index)
        return (frame["dataset"] == self.dataset) & (frame["arch"] == self.arch) & beta_ok


def _none_if_nan(value: object) -> float | None:
    if value is None:
        return None
    as_float = float(value)  # type: ignore[arg-type]
    return None if math.isnan(as_float) else as_float


def groups_of(trials: pd.DataFrame) -> tuple[GroupKey, ...]:
    """The study's groups, sorted by dataset, β, arch."""
    if trials.empty:
        return ()
    combos = trials[list(GROUP_COLS)].drop_duplicates()
    keys = {
        GroupKey(str(row.dataset), _none_if_nan(row.imb_factor), str(row.arch))
        for row in combos.itertuples(index=False)
    }
    return tuple(sorted(keys, key=lambda k: (k.dataset, k.imb_factor or 0.0, k.arch)))


def complete_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Only finished full-budget trials: stopped-early and failed ones carry partial or no values."""
    return trials[trials["status"] == COMPLETE]


def searched(trials: pd.DataFrame) -> pd.DataFrame:
    """Drop the fixed component-ablation variants from the trials.

    Every row but the fixed component-ablation variants (``variant`` set): searched MiSLAS
    settings, the paper setting and the baselines. Variants never enter the method comparison
    or the analyses of the searched settings.
    """
    return trials[trials["variant"].isna()]


def seed_stats(rows: pd.DataFrame, metrics: Sequence[Metric],
               column_of: Mapping[str, str] | None = None) -> dict[str, object]:
    """Seed count and per-metric mean and standard deviation over seeds.

    ``n_seeds`` and, per metric, ``<label>_mean`` / ``<label>_std`` over seeds: each seed's
    rows averaged first (a seed run twice does not count twice), std with ddof=1 (NaN for one
    seed). ``column_of`` reads a metric from another column (e.g. its temperature-scaled one).
    """
    column_of = column_of or {}
    columns = list(dict.fromkeys(column_of.get(m.column, m.column) for m in metrics))
    per_seed = rows.groupby("seed", dropna=False)[columns].mean()
    out: dict[str, object] = {"n_seeds": int(len(per_seed))}
    for metric in metrics:
        values = per_seed[column_of.get(metric.column, metric.column)]
        out[f"{metric.label}_mean"] = float(values.mean()) if len(values) else math.nan
        out[f"{metric.label}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return out


def best_labels(stats: pd.DataFrame, metrics: Sequence[Metric],
                candidates: Mapping[str, Iterable[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """Find, per metric, the rows holding the best mean.

    Per metric, the rows (index labels) holding the best mean: highest accuracy, lowest ECE/NLL.
    ``candidates`` limits a metric to some rows (default: every row).
    """
    best: dict[str, tuple[str, ...]] = {}
    for metric in metrics:
        values = stats[f"{metric.label}_mean"].dropna() if f"{metric.label}_mean" in stats else pd.Series()
        if candidates is not None and metric.label in candidates:
            values = values[values.index.isin(list(candidates[metric.label]))]
        if values.empty:
            best[metric.label] = ()
            continue
        target = values.max() if metric.higher_is_better else values.min()
        best[metric.label] = tuple(values.index[values == target])
    return best


def tick(value: object) -> str:
    """A component flag as a table cell: ✓ on, ✗ off, — unknown."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return "✓" if bool(value) else "✗"


def fmt_num(value: float | None, decimals: int) -> str:
    """A number for a table cell; missing values (an empty split, a method not run) as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{decimals}f}"


def fmt_mean_std(mean: float, std: float, n: int, decimals: int) -> str:
    """``mean ± std`` over seeds when there are several, the plain mean otherwise."""
    if n > 1 and not math.isnan(std) and not math.isnan(mean):
        return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return fmt_num(mean, decimals)


def fmt_param(name: str, value: object) -> str:
    """One tuned parameter as ``name=value`` text (for captions and lists)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return f"{name}={'on' if value else 'off'}"
    if isinstance(value, (float, np.floating)):
        return f"{name}={float(value):.4g}"
    return f"{name}={value}"


def describe_setting(row: pd.Series | dict[str, object]) -> str:
    """A MiSLAS setting in words, e.g. ``eps_1=0.3, eps_k=0, form=concave, …`` (null ones left out)."""
    parts = [fmt_param(name, row.get(name)) for name in TUNED_PARAMS]
    return ", ".join(part for part in parts if part)
