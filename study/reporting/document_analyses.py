"""The report's analysis sections: hyperparameter ablations (validation) and calibration (test).

Split from :mod:`study.reporting.document` (which assembles the whole document) so each module
stays short; the blocks are built from the computed :class:`GroupTables` only.
"""

from __future__ import annotations

import pandas as pd

from study.reporting import plots
from study.reporting.common import CALIBRATION_METRICS, describe_setting, fmt_mean_std, fmt_num
from study.reporting.compute import GroupTables
from study.reporting.display import (
    Block,
    DisplayTable,
    FigureArt,
    FigureBlock,
    Heading,
    Para,
    TableBlock,
    table_from_frame,
)

TEST = "test"


def figure_block(name: str, png: bytes, caption: str) -> FigureBlock:
    """One figure of the document: its file name, PNG bytes and caption."""
    return FigureBlock(FigureArt(name, png, caption))


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
        blocks.append(figure_block(f"{slug}-eps-heatmaps", plots.heatmap_png(g.heatmaps),
                           f"ε_1 × ε_K: mean val accuracy and val ECE over the complete MiSLAS trials in each "
                           f"cell (n per cell){binned}; grey: not tried."))
    if g.forms is not None:
        blocks.append(figure_block(f"{slug}-related-functions", plots.forms_png(g.forms),
                           "Related functions f(N) of the tried forms over this data set's class counts (grey ticks), "
                           f"with ε_1, ε_K of {g.forms.eps_source}; right: val accuracy per form (seed Fig. 8)."))
        blocks.append(TableBlock(_forms_display(g)))
    else:
        blocks.append(Para("Related-function plot left out: no class counts (classes.parquet) or no form.", note=True))
    if g.effects:
        names = " and ".join("ΔW ratio" if e.param == "dw_ratio" else "p (exp form only)" for e in g.effects)
        blocks.append(figure_block(f"{slug}-effects", plots.effects_png(g.effects),
                           f"Effect of {names}: each complete trial, and means over quantile bins of the parameter."))
    if g.importances.table is not None:
        blocks.append(figure_block(f"{slug}-importances", plots.importances_png(g.importances),
                           "Optuna parameter importances per objective (complete trials only)."))
        blocks.append(TableBlock(_importance_display(g)))
    else:
        blocks.append(Para(f"Parameter importances not computed: {g.importances.note}.", note=True))
    if g.pareto is not None:
        blocks.append(figure_block(f"{slug}-pareto", plots.pareto_png(g.pareto),
                           "Val accuracy vs val ECE of complete (full-budget) trials; red: Pareto front; "
                           "star: the paper's setting."))
        blocks.append(TableBlock(_pareto_display(g)))
    if not g.history.empty:
        blocks.append(figure_block(f"{slug}-history", plots.history_png(g.history),
                           "Study history: objectives in finishing order (× = stopped early, partial values), "
                           "best so far over complete trials."))
    return blocks


def ablation_section(groups: tuple[GroupTables, ...]) -> list[Block]:
    """Report section 3: the hyperparameter ablations of every group."""
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
    """Report section 4: calibration tables and figures of every group."""
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
            blocks.append(figure_block(f"{slug}-reliability", plots.reliability_png(g.reliability),
                               f"Reliability diagrams, {g.recorded.bins_text()}, test split (seed Figs. 9–12): "
                               "accuracy per confidence "
                               "bin, red = gap to perfect calibration; bins pooled over the row's seeds (n trials), "
                               "ECE from the pooled bins."))
        else:
            blocks.append(Para("No reliability bins (reliability.parquet) for this group's rows.", note=True))
        if g.confidence:
            blocks.append(figure_block(f"{slug}-confidence", plots.confidence_png(g.confidence), CONFIDENCE_CAPTION))
        else:
            blocks.append(Para("No confidence distribution (confidence.parquet) for this group's baselines or the "
                               "MiSLAS paper setting.", note=True))
        if g.norms:
            blocks.append(figure_block(f"{slug}-weight-norms", plots.norms_png(g.norms),
                               "Classifier weight norms ‖w_j‖ against class rank by training count (seed Figs. "
                               "13–14): light = per class (mean over seeds), dark = moving average."))
        else:
            blocks.append(Para("No classifier weight norms (classes.parquet) for cRT, LWS or MiSLAS.", note=True))
    return blocks
