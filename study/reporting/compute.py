"""All of the report's numbers, as typed tables, before anything is drawn or formatted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mislas.spec import DEFAULT_N_BINS
from study.reporting import ablations
from study.reporting.ablations import Effect, FormStudy, Heatmap, Pareto
from study.reporting.calibration import (
    CalibrationMetrics,
    ConfidenceBoxes,
    NormPanels,
    Reliability,
    calibration_metrics,
    confidence_boxes,
    norm_panels,
    reliability_curves,
)
from study.reporting.common import GroupKey, complete_trials, groups_of
from study.reporting.comparison import ComparisonTable, comparison_table
from study.reporting.components import ComponentTable, component_table
from study.reporting.importance import Importances, importances, studies_for
from study.reporting.load import StudyData
from study.reporting.paired import PairedTable, paired_table
from study.reporting.recorded import RecordedEval, recorded_eval
from study.reporting.status import StatusSummary, status_summary

PROVENANCE_COLUMNS = ("mislas_version", "torch_version", "ray_version", "optuna_version", "python_version",
                      "git_commit", "device_name", "hostname", "node_id", "node_ip")


@dataclass(frozen=True)
class GroupTables:
    """Everything computed for one (dataset, β, arch)."""

    group: GroupKey
    comparison: ComparisonTable
    components: ComponentTable | None  # None: the group has no component-ablation rows
    heatmaps: tuple[Heatmap, ...]
    forms: FormStudy | None
    effects: tuple[Effect, ...]
    importances: Importances
    pareto: Pareto | None
    history: pd.DataFrame
    reliability: tuple[Reliability, ...]
    norms: NormPanels
    calibration: CalibrationMetrics
    confidence: tuple[ConfidenceBoxes, ...]
    n_mislas_complete: int
    paired: PairedTable | None = None  # comparison rows against MiSLAS
    paired_components: PairedTable | None = None  # ablation variants against the full method
    recorded: RecordedEval = RecordedEval()  # the runs' recorded eval settings (bins, split rule) for captions


@dataclass(frozen=True)
class ReportTables:
    """The report's content; renderers only format it."""

    study: str
    root: Path
    settings: dict[str, object]
    status: StatusSummary
    groups: tuple[GroupTables, ...]
    provenance: pd.DataFrame  # field, value, trials
    timeline: pd.DataFrame  # trial_id, group, method, status, started_at, finished_at
    total_wall_s: float
    notes: tuple[str, ...]


def _group_tables(group: GroupKey, data: StudyData) -> GroupTables:
    trials = data.trials
    comparison = comparison_table(group, trials)
    components = component_table(group, trials)
    mislas = ablations.mislas_trials(group, trials)
    done = complete_trials(mislas)
    counts = ablations.class_counts(trials.loc[group.mask(trials), "trial_id"], data.classes)
    effects = [ablations.effect(done, "dw_ratio"), ablations.effect(done[done["form"] == "exp"], "p")]
    recorded = recorded_eval(trials, data.reliability, trials.loc[group.mask(trials), "trial_id"])
    n_bins = recorded.bootstrap_bins(DEFAULT_N_BINS)
    return GroupTables(
        group=group,
        comparison=comparison,
        components=components,
        heatmaps=ablations.heatmaps(done),
        forms=ablations.form_study(done, counts),
        effects=tuple(e for e in effects if e is not None),
        importances=importances(done, data.optuna, studies_for(mislas, data.optuna, data.name, group.dataset)),
        pareto=ablations.pareto(mislas),
        history=ablations.history(mislas),
        reliability=reliability_curves(comparison, data.reliability),
        norms=norm_panels(comparison, data.classes),
        calibration=calibration_metrics(comparison, trials),
        confidence=confidence_boxes(comparison, data.confidence),
        n_mislas_complete=len(done),
        paired=_paired_methods(comparison, trials, data.predictions, n_bins),
        paired_components=_paired_components(components, trials, data.predictions, n_bins),
        recorded=recorded,
    )


FULL_METHOD_VARIANT = "mixup+shift_bn+las"


def _paired_methods(comparison: ComparisonTable, trials: pd.DataFrame, predictions: pd.DataFrame,
                    n_bins: int) -> PairedTable | None:
    """Each comparison row against MiSLAS: its best-tuned row when it has trials, else Table 6's."""
    ids = comparison.trial_ids
    reference = next((r for r in ("MiSLAS (best tuned)", "MiSLAS (paper setting)") if ids.get(r)), None)
    return None if reference is None else paired_table(trials, predictions, ids, reference, n_bins=n_bins)


def _paired_components(components: ComponentTable | None, trials: pd.DataFrame, predictions: pd.DataFrame,
                       n_bins: int) -> PairedTable | None:
    if components is None or not components.trial_ids.get(FULL_METHOD_VARIANT):
        return None
    return paired_table(trials, predictions, components.trial_ids, FULL_METHOD_VARIANT, n_bins=n_bins)


def _provenance(trials: pd.DataFrame) -> pd.DataFrame:
    rows: list[dict[str, object]] = []
    for column in PROVENANCE_COLUMNS:
        counts = trials[column].fillna("(null)").astype(str).value_counts()
        rows.extend({"field": column, "value": value, "trials": int(n)} for value, n in counts.items())
    return pd.DataFrame(rows, columns=["field", "value", "trials"])


def _timeline(trials: pd.DataFrame) -> pd.DataFrame:
    frame = trials[["trial_id", "dataset", "method", "status", "started_at", "finished_at"]].copy()
    return frame.dropna(subset=["started_at"]).sort_values("started_at", kind="stable").reset_index(drop=True)


def compute_tables(data: StudyData) -> ReportTables:
    """Compute every table of the report from the loaded study."""
    groups = tuple(_group_tables(g, data) for g in groups_of(data.trials))
    notes = list(data.notes)
    if data.optuna.note:
        notes.append(f"{data.optuna.note}: Optuna parameter importances are not computed.")
    return ReportTables(
        study=data.name,
        root=data.root,
        settings=data.settings,
        status=status_summary(data.trials, data.optuna),
        groups=groups,
        provenance=_provenance(data.trials),
        timeline=_timeline(data.trials),
        total_wall_s=float(data.trials["wall_s"].sum(skipna=True)),
        notes=tuple(notes),
    )
