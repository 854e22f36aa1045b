"""Turn the computed tables into the report's document: formatted tables, figures, words."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pandas as pd

from study.reporting import plots
from study.reporting.common import CALIBRATION_METRICS, TEST_METRICS, describe_setting, fmt_mean_std, fmt_num, tick
from study.reporting.comparison import ComparisonTable
from study.reporting.components import ComponentTable
from study.reporting.compute import GroupTables, ReportTables
from study.reporting.display import (
    Block,
    DisplayTable,
    Document,
    FigureArt,
    FigureBlock,
    Heading,
    Para,
    TableBlock,
    table_from_frame,
)
from study.reporting.paired import PAIRED_METRICS, PairedTable
from study.reporting.published import SOURCES
from study.reporting.recorded import RecordedEval

MAX_LISTED = 200  # longer lists of unfinished trials are cut, with a count of the rest
OURS = "ours (test)"
PUBLISHED = "published"


def _fig(name: str, png: bytes, caption: str) -> FigureBlock:
    return FigureBlock(FigureArt(name, png, caption))


# --- method comparison -------------------------------------------------------------------------

def _is_paper(table: ComparisonTable) -> bool:
    ids = table.trial_ids
    return bool(ids.get("MiSLAS (best tuned)")) and ids.get("MiSLAS (best tuned)") == ids.get("MiSLAS (paper setting)")


def comparison_display(table: ComparisonTable, recorded: RecordedEval | None = None) -> DisplayTable:
    """The comparison with ours and (where the paper has them) published figures side by side.

    ``recorded``: the group's recorded eval settings (bins, split rule) the caption states.
    """
    recorded = recorded or RecordedEval()
    stats = table.stats
    has_published = bool(stats["published_source"].astype(bool).any())
    columns = [("", "Method"), ("", "seeds")] + [(OURS, m.label) for m in TEST_METRICS]
    if table.has_ts:
        columns.append((OURS, "T"))
    pub_metrics = [m for m in TEST_METRICS if m.label != "NLL"]
    if has_published:
        columns += [(PUBLISHED, m.label) for m in pub_metrics] + [(PUBLISHED, "source")]
    rows, bold = [], []
    for label, row in stats.iterrows():
        n = int(row["n_seeds"])
        cells = [str(label), str(n) if n else "—"]
        marks = [False, False]
        for m in TEST_METRICS:
            cells.append(fmt_mean_std(row[f"{m.label}_mean"], row[f"{m.label}_std"], n, m.decimals))
            marks.append(label in table.best.get(m.label, ()))
        if table.has_ts:
            cells.append(fmt_mean_std(row["T_mean"], row["T_std"], n, 2))
            marks.append(False)
        if has_published:
            cells += [fmt_num(row[f"published_{m.label}"], 1 if m.label != "ECE" else 2) for m in pub_metrics]
            cells.append(row["published_source"] or "—")
            marks += [False] * (len(pub_metrics) + 1)
        rows.append(tuple(cells))
        bold.append(tuple(marks))
    caption = (f"Method comparison, {table.group.label}: test top-1 (%) on Many / Medium / Few classes "
               f"({recorded.splits_text()}) and All, ECE (%, {recorded.bins_text()}), NLL (nats); mean ± std over "
               "seeds (complete trials). Bold: best of ours per column (highest accuracy, lowest ECE/NLL). "
               "— : no value (empty split or not run).")
    if table.has_ts:
        caption += (" +TS rows: the same trials after post-hoc temperature scaling (Guo et al. 2017; one T per "
                    "trial, fitted on the validation NLL): accuracy is unchanged, ECE and NLL are those of "
                    "softmax(z / T), T is the fitted temperature (mean ± std over seeds). Bold accuracy compares "
                    "the uncalibrated rows, bold ECE/NLL every row.")
    notes = []
    if any(spec.bn_eval for spec in table.specs.values()):
        notes.append("(BN eval): cRT / LWS with the frozen backbone's BatchNorm in eval mode (shift_bn false); the "
                     "rows without it ran BN in train mode, statistics re-estimated on the class-balanced batches "
                     "(Kang et al.'s code, the study's default).")
    if table.best_setting is not None:
        b = table.best_setting
        same = " (the paper setting)" if _is_paper(table) else ""
        notes.append(f"MiSLAS (best tuned) = {describe_setting(b.params)}{same}; chosen on validation among "
                     f"{b.n_settings} settings: val acc {b.val_acc:.2f}%, val ECE {b.val_ece:.2f}% "
                     f"(mean over {b.n_seeds} seed{'s' if b.n_seeds != 1 else ''}).")
    if has_published:
        used = sorted({s for src in stats["published_source"] if src for s in src.split("+")})
        notes.append("Published columns are figures reported by the paper, not computed from this study: "
                     + "; ".join(f"{k} = {SOURCES[k]}" for k in used) + ".")
    return DisplayTable(f"comparison-{table.group.slug}", caption, tuple(columns), tuple(rows), tuple(bold),
                        " ".join(notes), to_tex=True)


def comparison_section(groups: tuple[GroupTables, ...]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "1. Method comparison", "comparison")]
    for g in groups:
        blocks.append(Heading(3, g.group.label, f"comparison-{g.group.slug}"))
        if g.comparison.stats.empty:
            blocks.append(Para("No complete trials and no published figures for this group.", note=True))
            continue
        blocks.append(TableBlock(comparison_display(g.comparison, g.recorded)))
    return blocks


# --- component ablation ------------------------------------------------------------------------

LAS_CELLS = {"las": "✓", "ce": "✗", "uniform_ls": "uniform"}
TEST = "test"


def components_display(table: ComponentTable, recorded: RecordedEval | None = None) -> DisplayTable:
    """One row per variant: which components are on, and its test numbers (mean ± std over seeds)."""
    recorded = recorded or RecordedEval()
    columns = [("", "Variant"), ("", "Stage-1 mixup"), ("", "shift BN"), ("", "LAS"), ("", "seeds")]
    columns += [(TEST, m.label) for m in TEST_METRICS]
    rows, bold = [], []
    for v in table.variants:
        row = table.stats.loc[v.name]
        n = int(row["n_seeds"])
        cells = [v.name, tick(v.mixup), tick(v.shift_bn), LAS_CELLS.get(v.las or "", "—"), str(n) if n else "—"]
        marks = [False] * len(cells)
        for m in TEST_METRICS:
            cells.append(fmt_mean_std(row[f"{m.label}_mean"], row[f"{m.label}_std"], n, m.decimals))
            marks.append(v.name in table.best.get(m.label, ()))
        rows.append(tuple(cells))
        bold.append(tuple(marks))
    caption = (f"Component ablation, {table.group.label}: the paper's (Table 6) setting with Stage-1 mixup, shift "
               "learning on BatchNorm and label-aware smoothing each switched on (✓) or off (✗); LAS ✗ is plain "
               "cross-entropy (ε_1 = ε_K = 0), LAS uniform is uniform label smoothing (ε_K = ε_1). Test top-1 (%) "
               f"Many / Medium / Few / All, ECE (%, {recorded.bins_text()}), NLL (nats); mean ± std over seeds "
               "(complete trials). "
               "Bold: best per column (highest accuracy, lowest ECE/NLL).")
    n = table.n_incomplete
    note = f"{n} ablation trial{'s' if n != 1 else ''} stopped early or failed left out." if n else ""
    return DisplayTable(f"components-{table.group.slug}", caption, tuple(columns), tuple(rows), tuple(bold),
                        note, to_tex=True)


def _signed(value: object, digits: int) -> str:
    return "—" if not isinstance(value, float) or math.isnan(value) else f"{value:+.{digits}f}"


def paired_display(key: str, table: PairedTable, what: str) -> DisplayTable:
    """Per row: its difference from the reference by seed (mean [95 % t interval]) and the
    bootstrap interval over test images, per metric."""
    rows = []
    for label, r in table.stats.iterrows():
        cells = [str(label), str(int(r["n_seeds"]))]
        for m in PAIRED_METRICS:
            cells.append(f"{_signed(r[f'{m.label}_mean'], m.digits)} [{_signed(r[f'{m.label}_lo'], m.digits)}, "
                         f"{_signed(r[f'{m.label}_hi'], m.digits)}]")
            cells.append(f"[{_signed(r[f'{m.label}_boot_lo'], m.digits)}, {_signed(r[f'{m.label}_boot_hi'], m.digits)}]")
        rows.append(cells)
    frame = pd.DataFrame(rows, columns=["row", "seeds", *[f"Δ{m.label}{suffix}" for m in PAIRED_METRICS
                                                          for suffix in (" by seed", " bootstrap")]])
    caption = (f"{what} minus {table.reference}, test split, paired by seed: mean over the seeds both ran "
               f"[95 % Student-t interval over seeds], and a 95 % bootstrap interval over test images "
               f"({table.n_boot} resamples, the same images for both rows and every seed; ECE with "
               f"{table.n_bins} bins). Accuracy and ECE in points, NLL in nats; positive = higher than "
               f"{table.reference} (for ECE and NLL: worse). '—': one seed only, or no predictions.parquet rows.")
    return table_from_frame(key, caption, frame, index=False, to_tex=True)


def paired_section(groups: tuple[GroupTables, ...]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "1b. Paired differences against MiSLAS", "paired")]
    shown = False
    for g in groups:
        if g.paired is None and g.paired_components is None:
            continue
        shown = True
        blocks.append(Heading(3, g.group.label, f"paired-{g.group.slug}"))
        if g.paired is not None:
            blocks.append(TableBlock(paired_display(f"paired-{g.group.slug}", g.paired, "Each method")))
        if g.paired_components is not None:
            blocks.append(TableBlock(paired_display(f"paired-components-{g.group.slug}", g.paired_components,
                                                    "Each component-ablation variant")))
    if not shown:
        blocks.append(Para("No rows to pair: the comparison has no MiSLAS trials.", note=True))
    return blocks


def component_section(groups: tuple[GroupTables, ...]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "2. Component ablation (test split)", "components")]
    if not any(g.components is not None for g in groups):
        return blocks + [Para("No component-ablation rows (trials.parquet `variant`) in this study: run it with "
                              "--ablation components to measure what Stage-1 mixup, shift learning on BN and LAS "
                              "each add.", note=True)]
    for g in groups:
        blocks.append(Heading(3, g.group.label, f"components-{g.group.slug}"))
        if g.components is None:
            blocks.append(Para("No component-ablation rows for this group.", note=True))
            continue
        blocks.append(TableBlock(components_display(g.components, g.recorded)))
    return blocks


# --- ablations ---------------------------------------------------------------------------------

def _forms_display(g: GroupTables) -> DisplayTable:
    assert g.forms is not None
    s = g.forms.stats
    frame = pd.DataFrame({
        "form": s.index, "trials": s["n"].astype(int),
        "val acc mean ± std": [fmt_mean_std(m, sd, int(n), 2)
                               for m, sd, n in zip(s["val_acc_mean"], s["val_acc_std"], s["n"])],
        "val acc best": [fmt_num(v, 2) for v in s["val_acc_max"]],
        "val ECE mean": [fmt_num(v, 2) for v in s["val_ece_mean"]],
    })
    return table_from_frame(f"forms-{g.group.slug}", f"Accuracy per related-function form, {g.group.label} "
                            "(complete MiSLAS trials, validation split; std over trials).", frame,
                            index=False, to_tex=True)


def _importance_display(g: GroupTables) -> DisplayTable:
    imp = g.importances
    assert imp.table is not None
    frame = imp.table.map(lambda v: f"{v:.3f}").rename(columns={"val_acc": "val accuracy", "val_ece": "val ECE"})
    return table_from_frame(f"importance-{g.group.slug}", f"Parameter importances per objective, {g.group.label}: "
                            f"{imp.evaluator}, normalised to sum 1 per objective; {imp.note}.", frame, to_tex=True)


def _pareto_display(g: GroupTables) -> DisplayTable:
    assert g.pareto is not None
    pts = g.pareto.points
    front = pts[pts["on_front"]].sort_values("val_acc", ascending=False)
    frame = pd.DataFrame({
        "trial": front["trial_id"], "setting": [describe_setting(r) for _, r in front.iterrows()],
        "paper": ["yes" if v else "" for v in front["is_paper_setting"]],
        "val acc": [fmt_num(v, 2) for v in front["val_acc"]], "val ECE": [fmt_num(v, 2) for v in front["val_ece"]],
        "test acc": [fmt_num(v, 2) for v in front["test_acc"]], "test ECE": [fmt_num(v, 2) for v in front["test_ece"]],
    })
    caption = (f"Pareto front of val accuracy vs val ECE, {g.group.label}: {len(front)} of {len(pts)} complete "
               f"trials are non-dominated; {g.pareto.n_excluded} stopped-early trials left out (partial budget).")
    return table_from_frame(f"pareto-{g.group.slug}", caption, frame, index=False)


def _ablation_blocks(g: GroupTables) -> list[Block]:
    slug, label = g.group.slug, g.group.label
    blocks: list[Block] = [Heading(3, label, f"ablations-{slug}")]
    if g.n_mislas_complete == 0:
        return blocks + [Para("No complete MiSLAS trials: no ablation for this group.", note=True)]
    if g.heatmaps:
        binned = " (ε values binned: many distinct values were tried)" if g.heatmaps[0].binned else ""
        blocks.append(_fig(f"{slug}-eps-heatmaps", plots.heatmap_png(g.heatmaps),
                           f"ε_1 × ε_K: mean val accuracy and val ECE over the complete MiSLAS trials in each "
                           f"cell (n per cell){binned}; grey: not tried."))
    if g.forms is not None:
        blocks.append(_fig(f"{slug}-related-functions", plots.forms_png(g.forms),
                           "Related functions f(N) of the tried forms over this data set's class counts (grey ticks), "
                           f"with ε_1, ε_K of {g.forms.eps_source}; right: val accuracy per form (seed Fig. 8)."))
        blocks.append(TableBlock(_forms_display(g)))
    else:
        blocks.append(Para("Related-function plot left out: no class counts (classes.parquet) or no form.", note=True))
    if g.effects:
        names = " and ".join("ΔW ratio" if e.param == "dw_ratio" else "p (exp form only)" for e in g.effects)
        blocks.append(_fig(f"{slug}-effects", plots.effects_png(g.effects),
                           f"Effect of {names}: each complete trial, and means over quantile bins of the parameter."))
    if g.importances.table is not None:
        blocks.append(_fig(f"{slug}-importances", plots.importances_png(g.importances),
                           "Optuna parameter importances per objective (complete trials only)."))
        blocks.append(TableBlock(_importance_display(g)))
    else:
        blocks.append(Para(f"Parameter importances not computed: {g.importances.note}.", note=True))
    if g.pareto is not None:
        blocks.append(_fig(f"{slug}-pareto", plots.pareto_png(g.pareto),
                           "Val accuracy vs val ECE of complete (full-budget) trials; red: Pareto front; "
                           "star: the paper's setting."))
        blocks.append(TableBlock(_pareto_display(g)))
    if not g.history.empty:
        blocks.append(_fig(f"{slug}-history", plots.history_png(g.history),
                           "Study history: objectives in finishing order (× = stopped early, partial values), "
                           "best so far over complete trials."))
    return blocks


def ablation_section(groups: tuple[GroupTables, ...]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "3. Hyperparameter ablations (validation split)", "ablations")]
    for g in groups:
        blocks += _ablation_blocks(g)
    return blocks


# --- calibration -------------------------------------------------------------------------------

def calibration_display(g: GroupTables) -> DisplayTable:
    """The calibration metrics of every comparison row (mean over seeds), lowest per column bold."""
    cal = g.calibration
    columns = [("", "Method"), ("", "seeds")] + [(TEST, m.label) for m in CALIBRATION_METRICS]
    rows, bold = [], []
    for label, row in cal.stats.iterrows():
        n = int(row["n_seeds"])
        rows.append((str(label), str(n) if n else "—",
                     *(fmt_num(row[f"{m.label}_mean"], m.decimals) for m in CALIBRATION_METRICS)))
        bold.append((False, False, *(label in cal.best.get(m.label, ()) for m in CALIBRATION_METRICS)))
    caption = (f"Calibration metrics, {g.group.label}, test split, mean over seeds (the method comparison's rows "
               f"and trials): ECE ({g.recorded.bins_text('equal-width ')}), classwise ECE (mean over classes), "
               "adaptive (equal-mass) "
               "ECE, all in %; Brier score (Σ_k (p_k − 1[y=k])², mean over samples, in [0, 2]); ECE over the "
               "samples whose true class is Many / Medium / Few. +TS rows: after temperature scaling (the ECE per "
               "class split is not recorded after scaling: —). Bold: lowest per column.")
    return DisplayTable(f"calibration-metrics-{g.group.slug}", caption, tuple(columns), tuple(rows), tuple(bold),
                        to_tex=True)


CONFIDENCE_CAPTION = (
    "Top-label confidence (max softmax probability), test split, over the samples whose true class is a Many / "
    "Medium / Few class (in place of the paper's violin plot of the predicted probability): box = 25th–75th "
    "percentile, line = median, white dot = mean, whiskers = the 5th and 95th percentiles (not 1.5 IQR; no "
    "outliers drawn); red × = the row's top-1 accuracy on that split (a box above it: over-confident). Rows: the "
    "baselines present and MiSLAS at the paper setting; each statistic is the count-weighted mean over the row's "
    "trials (n; exact for the mean, an average of the seeds' quantiles for the rest).")


def calibration_section(groups: tuple[GroupTables, ...]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "4. Calibration (test split)", "calibration")]
    for g in groups:
        slug = g.group.slug
        blocks.append(Heading(3, g.group.label, f"calibration-{slug}"))
        if not g.calibration.empty:
            blocks.append(TableBlock(calibration_display(g)))
        else:
            blocks.append(Para("No classwise / adaptive ECE, Brier score or per-split ECE in trials.parquet for this "
                               "group (a study older than these columns).", note=True))
        if g.reliability:
            blocks.append(_fig(f"{slug}-reliability", plots.reliability_png(g.reliability),
                               f"Reliability diagrams, {g.recorded.bins_text()}, test split (seed Figs. 9–12): "
                               "accuracy per confidence "
                               "bin, red = gap to perfect calibration; bins pooled over the row's seeds (n trials), "
                               "ECE from the pooled bins."))
        else:
            blocks.append(Para("No reliability bins (reliability.parquet) for this group's rows.", note=True))
        if g.confidence:
            blocks.append(_fig(f"{slug}-confidence", plots.confidence_png(g.confidence), CONFIDENCE_CAPTION))
        else:
            blocks.append(Para("No confidence distribution (confidence.parquet) for this group's baselines or the "
                               "MiSLAS paper setting.", note=True))
        if g.norms:
            blocks.append(_fig(f"{slug}-weight-norms", plots.norms_png(g.norms),
                               "Classifier weight norms ‖w_j‖ against class rank by training count (seed Figs. "
                               "13–14): light = per class (mean over seeds), dark = moving average."))
        else:
            blocks.append(Para("No classifier weight norms (classes.parquet) for cRT, LWS or MiSLAS.", note=True))
    return blocks


# --- study status and provenance ---------------------------------------------------------------

def _cell_text(value: object) -> str:
    """Listing cells: floats to 2 decimals, times to the second, only an error's first line."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value).strip().splitlines()[0] if str(value).strip() else "—"


def _listing(key: str, caption: str, frame: pd.DataFrame) -> list[Block]:
    if frame.empty:
        return []
    shown = frame.head(MAX_LISTED).astype(object).map(_cell_text)
    more = len(frame) - len(shown)
    note = f"{more} more not listed." if more > 0 else ""
    return [TableBlock(table_from_frame(key, caption, shown, index=False, note=note))]


def status_section(t: ReportTables) -> list[Block]:
    s = t.status
    blocks: list[Block] = [Heading(2, "0. Trials", "trials")]
    blocks.append(TableBlock(table_from_frame(
        "status-counts", "Trials in trials.parquet by group and status. Only complete trials enter the tables "
        "and ablations; stopped-early (partial budget), failed and diverged (a loss or NLL non-finite or above "
        "10 x ln C nats) trials are listed below.", s.counts, to_tex=True)))
    if s.temperature_at_bound:
        blocks.append(Para(f"{s.temperature_at_bound} of {s.with_temperature} complete rows have their fitted "
                           "temperature on the fit's bound (column temperature_at_bound; T = 0.01 or 100): the "
                           "validation NLL was still falling there, so their T is no optimum and their *_ts "
                           "metrics are those of the bound."))
    if s.optuna_states:
        states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(s.optuna_states.items()))
        blocks.append(Para(f"Optuna journal trial states: {states}. Running trials are not in trials.parquet yet."))
    blocks += _listing("running", f"Running trials ({s.n_running}, from optuna.log).", s.running)
    blocks += _listing("stopped", f"Stopped-early trials ({len(s.stopped)}): left out of tables, Pareto fronts "
                       "and importances.", s.stopped)
    blocks += _listing("failed", f"Failed or diverged trials ({len(s.failed)}): left out of tables, Pareto "
                       "fronts and importances.", s.failed)
    blocks += _listing("other", f"Trials with another status ({len(s.other)}).", s.other)
    return blocks


def provenance_section(t: ReportTables) -> list[Block]:
    blocks: list[Block] = [Heading(2, "5. Provenance", "provenance")]
    if not t.timeline.empty:
        blocks.append(_fig("study-timeline", plots.timeline_png(t.timeline),
                           "Study timeline: each trial from start to finish, coloured by status."))
    blocks.append(TableBlock(table_from_frame("provenance", "Code, package versions and machines recorded by the "
                                              "trials (number of trials with each value).", t.provenance, index=False)))
    if t.settings:
        flat = _flatten(t.settings)
        settings = pd.DataFrame({"setting": list(flat), "value": [json.dumps(v, default=str) for v in flat.values()]})
        blocks.append(TableBlock(table_from_frame("settings", "The study's settings (study.json).", settings,
                                                  index=False)))
    return blocks


def _flatten(settings: dict[str, object], prefix: str = "") -> dict[str, object]:
    """Nested study.json sections (e.g. ``identity``) as ``identity.datasets`` rows, one level deep."""
    flat: dict[str, object] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and not prefix:
            flat.update(_flatten(value, f"{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _setting(settings: dict[str, object], key: str) -> object | None:
    """A setting from study.json's top level or its ``identity`` section (as study.run writes it)."""
    identity = settings.get("identity")
    if key in settings:
        return settings[key]
    return identity.get(key) if isinstance(identity, dict) else None


def _summary(t: ReportTables) -> tuple[str, ...]:
    counts = t.status.counts.loc["all"] if "all" in t.status.counts.index else pd.Series(dtype=int)
    parts = ", ".join(f"{int(v)} {k}" for k, v in counts.items() if k != "total" and counts.get("total", 0))
    hours = t.total_wall_s / 3600.0 if not math.isnan(t.total_wall_s) else 0.0
    lines = [f"Study {t.study!r} at {t.root}", f"Trials: {parts or 'none finished yet'}; "
             f"running (Optuna): {t.status.n_running}", f"Groups: {'; '.join(g.group.label for g in t.groups) or '—'}",
             f"Trial wall time, summed: {hours:.2f} h"]
    labels = {"objectives": "objectives", "budget": "budget", "trials": "MiSLAS trials per data set",
              "seeds": "seeds", "methods": "methods", "baseline_bn": "cRT/LWS BN train mode",
              "ablation": "ablation", "scheduler": "scheduler", "created_at": "created"}
    for key, label in labels.items():
        value = _setting(t.settings, key)
        if value is not None:
            lines.append(f"{label}: {json.dumps(value, default=str)}")
    return tuple(lines)


def build_document(t: ReportTables) -> Document:
    """The report's document from its computed tables (figures are drawn here)."""
    blocks: list[Block] = [Para(n, note=True) for n in t.notes]
    blocks += status_section(t)
    blocks += comparison_section(t.groups)
    blocks += paired_section(t.groups)
    blocks += component_section(t.groups)
    blocks += ablation_section(t.groups)
    blocks += calibration_section(t.groups)
    blocks += provenance_section(t)
    return Document(f"MiSLAS study report: {t.study}", _summary(t), tuple(blocks))
