"""Turn the computed tables into the report's document: formatted tables, figures, words."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pandas as pd

from study.reporting import plots
from study.reporting.common import TEST_METRICS, Metric, describe_setting, fmt_mean_std, fmt_num, tick
from study.reporting.comparison import ComparisonTable
from study.reporting.components import ComponentTable
from study.reporting.compute import GroupTables, ReportTables
from study.reporting.display import (
    Block,
    DisplayTable,
    Document,
    Heading,
    Para,
    TableBlock,
    table_from_frame,
)
from study.reporting.document_analyses import TEST, ablation_section, calibration_section, figure_block
from study.reporting.paired import PAIRED_METRICS, PairedTable
from study.reporting.published import SOURCES
from study.reporting.recorded import RecordedEval

MAX_LISTED = 200  # longer lists of unfinished trials are cut, with a count of the rest
OURS = "ours (test)"
PUBLISHED = "published"


# --- method comparison -------------------------------------------------------------------------

def _is_paper(table: ComparisonTable) -> bool:
    ids = table.trial_ids
    return bool(ids.get("MiSLAS (best tuned)")) and ids.get("MiSLAS (best tuned)") == ids.get("MiSLAS (paper setting)")


def _comparison_row(table: ComparisonTable, label: str, row: pd.Series, pub_metrics: list[Metric],
                    has_published: bool) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """One method's cells (ours, T, published) and which of them are bold."""
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
    return tuple(cells), tuple(marks)


def _comparison_caption(table: ComparisonTable, recorded: RecordedEval) -> str:
    caption = (f"Method comparison, {table.group.label}: test top-1 (%) on Many / Medium / Few classes "
               f"({recorded.splits_text()}) and All, ECE (%, {recorded.bins_text()}), NLL (nats); mean ± std over "
               "seeds (complete trials). Bold: best of ours per column (highest accuracy, lowest ECE/NLL). "
               "— : no value (empty split or not run).")
    if table.has_ts:
        caption += (" +TS rows: the same trials after post-hoc temperature scaling (Guo et al. 2017; one T per "
                    "trial, fitted on the validation NLL): accuracy is unchanged, ECE and NLL are those of "
                    "softmax(z / T), T is the fitted temperature (mean ± std over seeds). Bold accuracy compares "
                    "the uncalibrated rows, bold ECE/NLL every row.")
    return caption


def _comparison_notes(table: ComparisonTable, has_published: bool) -> str:
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
        used = sorted({s for src in table.stats["published_source"] if src for s in src.split("+")})
        notes.append("Published columns are figures reported by the paper, not computed from this study: "
                     + "; ".join(f"{k} = {SOURCES[k]}" for k in used) + ".")
    return " ".join(notes)


def comparison_display(table: ComparisonTable, recorded: RecordedEval | None = None) -> DisplayTable:
    """The comparison with ours and (where the paper has them) published figures side by side.

    ``recorded``: the group's recorded eval settings (bins, split rule) the caption states.
    """
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
        cells, marks = _comparison_row(table, str(label), row, pub_metrics, has_published)
        rows.append(cells)
        bold.append(marks)
    return DisplayTable(f"comparison-{table.group.slug}", _comparison_caption(table, recorded or RecordedEval()),
                        tuple(columns), tuple(rows), tuple(bold), _comparison_notes(table, has_published),
                        to_tex=True)


def comparison_section(groups: tuple[GroupTables, ...]) -> list[Block]:
    """Report section 1: the method comparison of every group."""
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
    """Display table of a paired comparison against the reference row.

    Per row: its difference from the reference by seed (mean [95 % t interval]) and the
    bootstrap interval over test images, per metric.
    """
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
    """Report section 1b: paired differences against MiSLAS per group."""
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
    """Report section 2: the component ablation of every group."""
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
    """Report section 0: trial counts by status and the trials that did not complete."""
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
    """Report section 5: study timeline, recorded code and machines, and the study's settings."""
    blocks: list[Block] = [Heading(2, "5. Provenance", "provenance")]
    if not t.timeline.empty:
        blocks.append(figure_block("study-timeline", plots.timeline_png(t.timeline),
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
