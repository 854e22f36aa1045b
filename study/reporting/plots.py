"""Figures drawn from the computed tables; each function returns PNG bytes.

Figures are made with ``matplotlib.figure.Figure`` directly (no pyplot), so no global state or
GUI backend is touched and the report runs headless.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study.reporting.ablations import Effect, FormStudy, Heatmap, Pareto
from study.reporting.calibration import CLASS_SPLITS, ConfidenceBoxes, NormPanels, Reliability
from study.reporting.common import COMPLETE, DIVERGED, FAILED, STOPPED
from study.reporting.importance import Importances

DPI = 110
PALETTE = {
    "CE": "#7f7f7f", "CE+mixup": "#bcbd22", "cRT": "#1f77b4", "cRT+mixup": "#ff7f0e",
    "LWS": "#2ca02c", "LWS+mixup": "#d62728", "τ-norm": "#9467bd", "τ-norm+mixup": "#8c564b",
    "MiSLAS (paper setting)": "#17becf", "MiSLAS (best tuned)": "#e377c2",
    "cRT (BN eval)": "#aec7e8", "cRT+mixup (BN eval)": "#ffbb78", "LWS (BN eval)": "#98df8a",
    "LWS+mixup (BN eval)": "#ff9896",
}
STATUS_COLORS = {COMPLETE: "#1f77b4", STOPPED: "#ff7f0e", FAILED: "#d62728", DIVERGED: "#9467bd"}
METRIC_NAMES = {"val_acc": "val accuracy (%)", "val_ece": "val ECE (%)"}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def heatmap_png(maps: tuple[Heatmap, ...]) -> bytes:
    """ε_1 × ε_K grids of mean val accuracy and val ECE, each cell annotated with mean and n."""
    fig = _figure(5.2 * len(maps), 4.2)
    for ax, hm in zip(fig.subplots(1, len(maps), squeeze=False)[0], maps):
        cmap = colormaps["viridis" if hm.metric == "val_acc" else "magma_r"].with_extremes(bad="#dddddd")
        image = ax.imshow(np.ma.masked_invalid(hm.mean), cmap=cmap, aspect="auto", origin="lower")
        fig.colorbar(image, ax=ax, label=METRIC_NAMES[hm.metric])
        ax.set_xticks(range(len(hm.eps_k_levels)), hm.eps_k_levels, rotation=30 if hm.binned else 0)
        ax.set_yticks(range(len(hm.eps_1_levels)), hm.eps_1_levels)
        ax.set_xlabel("ε_K")
        ax.set_ylabel("ε_1")
        ax.set_title(f"mean {METRIC_NAMES[hm.metric]}")
        for (i, j), value in np.ndenumerate(hm.mean):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.1f}\nn={hm.count[i, j]}", ha="center", va="center", fontsize=7, color="white",
                        bbox={"facecolor": "black", "alpha": 0.25, "pad": 1, "linewidth": 0})
    return _png(fig)


def forms_png(forms: FormStudy) -> bytes:
    """Seed Fig. 8 analogue: ε = f(N) per form over the real class counts, and val accuracy per form."""
    fig = _figure(11, 4.0)
    left, right = fig.subplots(1, 2, width_ratios=[1.5, 1])
    marker = "o" if forms.counts.size <= 40 else None
    for name, curve in forms.curves.groupby("curve", sort=False):
        left.plot(curve["count"], curve["epsilon"], marker=marker, markersize=3, label=name)
    left.plot(forms.counts, np.zeros_like(forms.counts), "|", color="#888888", markersize=8, label="class counts")
    left.set_xlabel("N_y, training images of class y (one point per class)")
    left.set_ylabel("ε_y = f(N_y)")
    left.set_title(f"related functions, ε_1={forms.eps_1:g}, ε_K={forms.eps_k:g} ({forms.eps_source})", fontsize=9)
    left.legend(fontsize=8)
    stats = forms.stats
    x = np.arange(len(stats))
    right.bar(x, stats["val_acc_mean"], yerr=stats["val_acc_std"].fillna(0.0), color="#4c72b0", capsize=3,
              label="mean ± std")
    right.scatter(x, stats["val_acc_max"], color="#dd8452", zorder=3, label="best trial")
    right.set_xticks(x, [f"{f}\n(n={n})" for f, n in zip(stats.index, stats["n"])])
    low = np.nanmin(stats["val_acc_mean"] - stats["val_acc_std"].fillna(0.0))
    right.set_ylim(max(0.0, low - 2.0), np.nanmax(stats["val_acc_max"]) + 1.0)
    right.set_ylabel("val accuracy (%)")
    right.set_title("accuracy per form (complete trials)", fontsize=9)
    right.legend(fontsize=8)
    return _png(fig)


def effects_png(effects: tuple[Effect, ...]) -> bytes:
    """Val accuracy and ECE against the ΔW ratio and p: trials as points, binned means as a line."""
    fig = _figure(10, 3.4 * len(effects))
    axes = fig.subplots(len(effects), 2, squeeze=False)
    for row, eff in zip(axes, effects):
        for ax, metric in zip(row, ("val_acc", "val_ece")):
            ax.scatter(eff.points[eff.param], eff.points[metric], s=14, alpha=0.5, color="#4c72b0", label="trial")
            ax.plot(eff.binned["x_median"], eff.binned[f"{metric}_mean"], color="#c44e52", marker="s",
                    label="binned mean")
            ax.set_xscale("log")
            ax.set_xlabel("ΔW learning-rate ratio" if eff.param == "dw_ratio" else "p (exp form)")
            ax.set_ylabel(METRIC_NAMES[metric])
            ax.legend(fontsize=8)
    return _png(fig)


def importances_png(imp: Importances) -> bytes:
    """Horizontal bars of the normalised importances, one panel per objective."""
    table = imp.table
    assert table is not None
    fig = _figure(10, 0.45 * len(table) + 1.6)
    for ax, column in zip(fig.subplots(1, len(table.columns), squeeze=False)[0], table.columns):
        ordered = table[column].sort_values()
        ax.barh(ordered.index, ordered.to_numpy(), color="#55a868")
        ax.set_xlim(0, 1)
        ax.set_title(f"importance for {METRIC_NAMES.get(column, column)}", fontsize=9)
    return _png(fig)


def pareto_png(front: Pareto) -> bytes:
    """Val accuracy vs val ECE of complete trials; the non-dominated ones joined."""
    pts = front.points
    fig = _figure(6.5, 4.6)
    ax = fig.subplots()
    ax.scatter(pts["val_ece"], pts["val_acc"], s=16, color="#aaaaaa", label="complete trial")
    on = pts[pts["on_front"]].sort_values("val_ece")
    ax.plot(on["val_ece"], on["val_acc"], color="#c44e52", marker="o", drawstyle="steps-post", label="Pareto front")
    paper = pts[pts["is_paper_setting"]]
    ax.scatter(paper["val_ece"], paper["val_acc"], marker="*", s=160, color="#17becf", edgecolor="black",
               zorder=4, label="paper setting")
    ax.set_xlabel("val ECE (%) — lower is better")
    ax.set_ylabel("val accuracy (%) — higher is better")
    ax.legend(fontsize=8)
    return _png(fig)


def history_png(hist: pd.DataFrame) -> bytes:
    """Objectives in finishing order; stopped-early trials marked ×; best-so-far over complete ones."""
    fig = _figure(10, 3.4)
    for ax, metric, best in zip(fig.subplots(1, 2), ("val_acc", "val_ece"), ("best_acc", "best_ece")):
        for status, marker in ((COMPLETE, "o"), (STOPPED, "x")):
            part = hist[hist["status"] == status]
            ax.scatter(part["order"], part[metric], marker=marker, s=16, color=STATUS_COLORS[status], label=status)
        ax.step(hist["order"], hist[best], where="post", color="black", linewidth=1, label="best so far")
        ax.set_xlabel("trial (finishing order)")
        ax.set_ylabel(METRIC_NAMES[metric])
        ax.legend(fontsize=8)
    return _png(fig)


def timeline_png(timeline: pd.DataFrame) -> bytes:
    """Every trial as a bar from start to finish, coloured by status: how the study ran."""
    fig = _figure(10, min(8.0, 1.5 + 0.04 * len(timeline)))
    ax = fig.subplots()
    start = timeline["started_at"].min()
    begin = (timeline["started_at"] - start).dt.total_seconds() / 60.0
    end = (timeline["finished_at"].fillna(timeline["started_at"]) - start).dt.total_seconds() / 60.0
    colors = [STATUS_COLORS.get(s, "#7f7f7f") for s in timeline["status"]]
    ax.barh(np.arange(len(timeline)), (end - begin).clip(lower=0.05), left=begin, color=colors, height=0.8)
    for status, color in STATUS_COLORS.items():
        ax.bar([0], [0], color=color, label=status)
    ax.set_xlabel("minutes since the first trial started")
    ax.set_ylabel("trial (by start)")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def reliability_png(curves: tuple[Reliability, ...]) -> bytes:
    """Seed Figs. 9–12 analogue: accuracy per confidence bin (15 bins), gap to the diagonal in red."""
    ncols = min(5, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig = _figure(2.7 * ncols, 2.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, curve in zip(axes, curves):
        b = curve.bins
        width = (b["upper"] - b["lower"]).to_numpy(float)
        acc = b["accuracy"].fillna(0.0).to_numpy(float)
        conf = b["confidence"].to_numpy(float)
        ax.bar(b["lower"], acc, width=width, align="edge", color="#4c72b0", edgecolor="black", linewidth=0.4,
               label="accuracy")
        gap_base = np.where(np.isnan(conf), 0.0, np.minimum(acc, conf))
        gap = np.where(np.isnan(conf), 0.0, np.abs(conf - acc))
        ax.bar(b["lower"], gap, bottom=gap_base, width=width, align="edge", color="#c44e52", alpha=0.45,
               edgecolor="#c44e52", linewidth=0.4, label="gap")
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{curve.label}\nECE {curve.ece:.2f}% (n={curve.n_trials})", fontsize=8)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="upper left")
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    return _png(fig)


def norms_png(panels: NormPanels) -> bytes:
    """Seed Figs. 13–14 analogue: ‖w_j‖ against class rank; light = per class, dark = moving average."""
    fig = _figure(4.2 * len(panels), 3.6)
    for ax, (title, lines) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for line in lines:
            color = PALETTE.get(line.label, "#333333")
            ax.plot(line.frame["rank"], line.frame["weight_norm"], color=color, alpha=0.3, linewidth=1)
            ax.plot(line.frame["rank"], line.frame["smooth"], color=color, linewidth=2,
                    label=f"{line.label} (n={line.n_trials})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("class rank by training count (0 = most images)")
        ax.set_ylabel("weight norm ‖w_j‖")
        ax.legend(fontsize=7)
    return _png(fig)


def confidence_png(boxes: tuple[ConfidenceBoxes, ...]) -> bytes:
    """Plot the top-label confidence per class split as box plots (PNG bytes).

    The paper's violin plot of the predicted probability per class split, as box plots drawn
    from stored quantiles (``Axes.bxp``): one panel per split (Many / Medium / Few, by the
    sample's true class), one box per row; whiskers at the 5th / 95th percentiles, white dot the
    mean, red × the row's accuracy on that split (confidence above it: over-confident).
    """
    splits = [s for s in CLASS_SPLITS if any(s in b.stats.index for b in boxes)]
    panel = 0.55 * len(boxes) + 1.4
    if len(boxes) <= 6:  # panels side by side
        fig = _figure(max(9.0, len(splits) * panel), 4.8)
        axes = fig.subplots(1, len(splits), squeeze=False, sharey=True)[0]
    else:  # many rows: panels one above the other
        fig = _figure(max(9.0, panel), 4.4 * len(splits))
        axes = fig.subplots(len(splits), 1, squeeze=False)[:, 0]
    for ax, split in zip(axes, splits):
        present = [b for b in boxes if split in b.stats.index]
        stats = []
        for b in present:
            (entry,) = [d for d in b.bxp_stats() if d["label"] == split]
            stats.append({**entry, "label": f"{b.label} (n={b.n_trials})"})
        positions = list(range(len(present)))
        drawn = ax.bxp(stats, positions=positions, patch_artist=True, showmeans=True, showfliers=False,
                       medianprops={"color": "black", "linewidth": 1.5},
                       meanprops={"marker": "o", "markerfacecolor": "white", "markeredgecolor": "black",
                                  "markersize": 5})
        for patch, b in zip(drawn["boxes"], present):
            patch.set_facecolor(PALETTE.get(b.label, "#cccccc"))
            patch.set_alpha(0.8)
        accuracy = [b.accuracy.get(split, math.nan) / 100.0 for b in present]
        ax.scatter(positions, accuracy, marker="x", s=50, color="#c44e52", zorder=4)
        ax.set_title(f"{split.capitalize()} classes (samples by true class)", fontsize=9)
        ax.set_ylim(0.0, 1.02)
        ax.grid(axis="y", alpha=0.3)
        for text in ax.get_xticklabels():
            text.set_rotation(40)
            text.set_horizontalalignment("right")
            text.set_fontsize(7)
    for ax in axes if len(boxes) > 6 else axes[:1]:
        ax.set_ylabel("top-label confidence (max softmax), test")
    handles = [Line2D([], [], color="black", linewidth=1.5, label="median (box: 25th–75th pct.)"),
               Line2D([], [], color="black", linewidth=1.0, label="whiskers: 5th / 95th pct."),
               Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="black", label="mean"),
               Line2D([], [], marker="x", linestyle="", color="#c44e52", label="accuracy of the split")]
    fig.legend(handles=handles, fontsize=7, loc="outside upper center", ncols=len(handles))
    return _png(fig)
