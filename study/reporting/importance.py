"""Optuna parameter importances per objective (val accuracy, val ECE), per group.

Why trials.parquet and not the journal's trial values: Ray Tune tells Optuna that an
ASHA-stopped trial is COMPLETE with its last (partial) values, so the journal cannot tell full
from partial trials; trials.parquet's ``status`` can. The journal gives the search space (the
distributions Optuna sampled from); the values are the complete trials' rows. Evaluator:
PED-ANOVA (Optuna's default; fANOVA would need scikit-learn, which the report does not require).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

from study.reporting.common import GROUP_COLS
from study.reporting.load import OptunaInfo
from study.tune_adapter import quiet_optuna

MIN_TRIALS = 8  # fewer complete trials give importances that are noise
OBJECTIVES = (("val_acc", True), ("val_ece", False))  # (column, higher is better)
NOT_PARAMS = {*GROUP_COLS, "seed", "method", "mixup"}


@dataclass(frozen=True)
class Importances:
    """Normalised importances (rows: parameters; columns: objectives), or why there are none."""

    table: pd.DataFrame | None
    n_trials: int
    evaluator: str
    note: str


def _native(value: object) -> object:
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _merge(a: BaseDistribution, b: BaseDistribution) -> BaseDistribution:
    """One distribution covering both (define-by-run ranges may move, e.g. ε_K ≤ ε_1)."""
    if isinstance(a, FloatDistribution) and isinstance(b, FloatDistribution):
        return FloatDistribution(min(a.low, b.low), max(a.high, b.high), log=a.log and b.log)
    if isinstance(a, IntDistribution) and isinstance(b, IntDistribution):
        return IntDistribution(min(a.low, b.low), max(a.high, b.high), log=a.log and b.log)
    if isinstance(a, CategoricalDistribution) and isinstance(b, CategoricalDistribution):
        return CategoricalDistribution(list(dict.fromkeys([*a.choices, *b.choices])))
    return a


def _widen(dist: BaseDistribution, values: pd.Series) -> BaseDistribution:
    """Cover the values actually run (an enqueued paper setting may lie outside the sampled range)."""
    if isinstance(dist, CategoricalDistribution):
        extra: list[Any] = [_native(v) for v in values.unique()]
        return CategoricalDistribution(list(dict.fromkeys([*dist.choices, *extra])))
    assert isinstance(dist, (FloatDistribution, IntDistribution)), type(dist).__name__
    low, high = min(dist.low, float(values.min())), max(dist.high, float(values.max()))
    if isinstance(dist, IntDistribution):
        return IntDistribution(int(low), int(high), log=dist.log and low >= 1)
    return FloatDistribution(low, high, log=dist.log and low > 0)


def column_name(param: str) -> str:
    """The trials.parquet column of an Optuna parameter: nested Tune configs name it ``las/eps_1``."""
    return param.replace(".", "/").split("/")[-1]


def studies_for(group_mislas: pd.DataFrame, info: OptunaInfo, study: str, dataset: str) -> list[optuna.Study]:
    """Find the Optuna studies that sampled this group's trials.

    The Optuna studies that sampled this group's trials: those named in the rows'
    ``optuna_study`` column, else ``NAME:dataset`` (one study per data set), else ``NAME``.
    """
    named = group_mislas["optuna_study"].dropna().unique() if "optuna_study" in group_mislas else []
    candidates = list(named) or [f"{study}:{dataset}", study]
    found = [info.studies[n] for n in candidates if n in info.studies]
    if not found and len(info.studies) == 1:
        found = list(info.studies.values())
    return found


def search_space(studies: list[optuna.Study]) -> dict[str, BaseDistribution]:
    """Every parameter Optuna sampled, keyed by its column name, one distribution covering all trials."""
    merged: dict[str, BaseDistribution] = {}
    for trial in (t for s in studies for t in s.get_trials(deepcopy=False)):
        for param, dist in trial.distributions.items():
            name = column_name(param)
            merged[name] = _merge(merged[name], dist) if name in merged else dist
    return merged


def _frame_study(done: pd.DataFrame, space: dict[str, BaseDistribution]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for row in done.itertuples(index=False):
        params = {n: _native(getattr(row, n)) for n in space if not pd.isna(getattr(row, n))}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: space[n] for n in params},
            values=[float(row.val_acc), float(row.val_ece)]))
    return study


def importances(done: pd.DataFrame, info: OptunaInfo, studies: list[optuna.Study]) -> Importances:
    """Compute PED-ANOVA importances of the tuned parameters.

    PED-ANOVA importances of the tuned parameters for each objective over ``done`` (complete
    MiSLAS trials of one group) in the space of ``studies``; nothing is computed without a
    study or with too few trials.
    """
    evaluator = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator)"
    if not info.studies:
        return Importances(None, 0, evaluator, info.note)
    if not studies:
        return Importances(None, 0, evaluator, f"no Optuna study in optuna.log for this group "
                           f"(it holds {', '.join(sorted(info.studies))})")
    done = done.dropna(subset=["val_acc", "val_ece"])
    if len(done) < MIN_TRIALS:
        return Importances(None, len(done), evaluator,
                           f"only {len(done)} complete trials (at least {MIN_TRIALS} needed)")
    space = {n: d for n, d in search_space(studies).items() if n in done.columns and n not in NOT_PARAMS}
    varied = {n: _widen(d, done[n].dropna()) for n, d in space.items() if done[n].dropna().nunique() > 1}
    if not varied:
        return Importances(None, len(done), evaluator,
                           "no Optuna parameter matches a varied trials.parquet column")
    quantile = max(0.1, min(0.5, 5.0 / len(done)))  # PED-ANOVA wants >= 5 trials in the top quantile
    columns = {}
    with quiet_optuna():  # PED-ANOVA warns that it minimises the target: the sign is set below
        study = _frame_study(done, varied)
        for column, higher in OBJECTIVES:
            index = 0 if column == "val_acc" else 1
            sign = -1.0 if higher else 1.0
            def target(t: Any, i: int = index, s: float = sign) -> float:
                return s * float(t.values[i])

            columns[column] = get_param_importances(
                study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile), target=target)
    # ties (equal importances) in parameter-name order: the evaluator's dict order varies between runs
    table = pd.DataFrame(columns).fillna(0.0).sort_index().sort_values("val_acc", ascending=False, kind="stable")
    table.index.name = "parameter"
    note = f"{len(done)} complete trials, top quantile {quantile:.2f}"
    return Importances(table, len(done), evaluator, note)
