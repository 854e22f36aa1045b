"""Every number of the report's tables against an independent pandas aggregation of the Parquet.

The expectations below are computed here from the raw Parquet with different code (one groupby
over all groups and methods, settings keyed by their string form), not by calling the report's
own helpers. Component-ablation rows (``variant`` set) are fixed rows of their own table: the
searched-settings expectations below leave them out (the fixture scores them above every
searched setting, so a leak would change these numbers).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tests.study.reporting.expected import METRICS, TS_METRICS, expected_trials, over_seeds, searched_mislas
from tests.study.reporting.report_fixture import full_report, full_study, parse_html

LOWER_IS_BETTER = {"ECE", "NLL"}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@pytest.fixture(scope="module")
def trials() -> pd.DataFrame:
    return pd.read_parquet(full_study() / "trials.parquet")


@pytest.fixture(scope="module")
def result():
    return full_report()


def _groups(result) -> dict[tuple, object]:
    return {(g.group.dataset, g.group.imb_factor, g.group.arch): g for g in result.tables.groups}


def expected_rows(trials: pd.DataFrame, *, ts: bool = False) -> dict[tuple, pd.DataFrame]:
    """Per (dataset, β, arch): label -> mean/std over seeds of per-seed means, written independently,
    keyed by the METRICS columns. With ``ts`` the "+TS" rows too (the same trials with TS values;
    their ECE and NLL from the temperature-scaled columns)."""
    def columns(label: str) -> dict[str, str]:
        source = TS_METRICS if "+TS" in label else METRICS
        return {column: source[metric] for metric, column in METRICS.items()}

    return {key: pd.DataFrame({label: over_seeds(rows, columns(label)) for label, rows in by_label.items()}).T
            for key, by_label in expected_trials(trials, ts=ts).items()}


def test_comparison_numbers_equal_independent_aggregation(trials, result):
    expected = expected_rows(trials, ts=True)
    groups = _groups(result)
    assert set(expected) == set(groups)
    for key, exp in expected.items():
        stats = groups[key].comparison.stats
        assert set(exp.index) <= set(stats.index), key
        assert any("+TS" in label for label in exp.index), key
        assert any("(BN eval)" in label for label in stats.index) == (key[0] == "cifar10_lt"), key
        for label, row in exp.iterrows():
            for metric, column in METRICS.items():
                assert _same(stats.loc[label, f"{metric}_mean"], row[(column, "mean")]), (key, label, metric)
                std = row[(column, "std")] if row[(column, "count")] > 1 else math.nan
                assert _same(stats.loc[label, f"{metric}_std"], std), (key, label, metric)
            assert stats.loc[label, "n_seeds"] == row[("test_acc", "count")], (key, label)


def test_html_cells_show_the_numbers_and_bold_marks_the_true_best(trials, result):
    """Every cell of ours, uncalibrated and "+TS" rows. Bold: accuracy among the uncalibrated rows
    (a "+TS" row repeats them), ECE and NLL among every row (temperature scaling competes)."""
    expected = expected_rows(trials, ts=True)
    html = parse_html((result.out_dir / "report.html").read_text())
    for key, g in _groups(result).items():
        exp = expected[key]
        rows = html.tables[f"comparison-{g.group.slug}"]
        header = html.headers[f"comparison-{g.group.slug}"][-1]
        by_label = {r[0][0]: r for r in rows}
        assert {label for label, r in by_label.items() if r[1][0] != "—"} == set(exp.index)  # rows of ours
        for metric, column in METRICS.items():
            j = header.index(metric)  # the first (ours) column of that name
            means = exp[(column, "mean")].astype(float).dropna()
            if metric not in LOWER_IS_BETTER:
                means = means[~means.index.str.contains(r"\+TS", regex=True)]
            target = means.min() if metric in LOWER_IS_BETTER else means.max()
            true_best = set(means.index[np.isclose(means, target, rtol=0, atol=1e-12)])
            bolded = {label for label, r in by_label.items() if r[j][1]}
            assert bolded == true_best, (key, metric, bolded, true_best)
            for label, mean in exp[(column, "mean")].items():
                text = by_label[label][j][0]
                if math.isnan(mean):
                    assert text == "—"
                    continue
                decimals = 3 if metric == "NLL" else 2
                assert text.split(" ± ")[0] == f"{mean:.{decimals}f}", (key, label, metric, text)
                std = exp.loc[label, (column, "std")]
                if exp.loc[label, (column, "count")] > 1:
                    assert text.split(" ± ")[1] == f"{std:.{decimals}f}"


def test_bold_is_the_same_in_markdown_and_latex(result):
    md = (result.out_dir / "report.md").read_text()
    tex = (result.out_dir / "tables.tex").read_text()
    for g in result.tables.groups:
        table = next(t for t in result.document.tables if t.key == f"comparison-{g.group.slug}")
        for row, bold in zip(table.rows, table.bold):
            line = next(ln for ln in md.splitlines() if ln.startswith(f"| {row[0]} |") and row[1] in ln
                        and all(c.replace("|", "\\|") in ln for c in row[2:5]))
            for cell, b in zip(row, bold):
                if b:
                    assert f"**{cell}**" in line
        n_bold = sum(sum(b) for b in table.bold)
        section = tex.split(f"\\label{{tab:comparison-{g.group.slug}}}")[1].split("\\end{table}")[0]
        assert section.count("\\textbf{") == n_bold
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex


def test_published_figures_beside_ours_only_where_dataset_and_backbone_match(result):
    html = parse_html((result.out_dir / "report.html").read_text())
    cifar = html.tables["comparison-cifar10_lt-b100-resnet32"]
    header = html.headers["comparison-cifar10_lt-b100-resnet32"]
    assert "published" in header[0]
    names = header[-1]
    pub_all = len(names) - 1 - names[::-1].index("All")  # the last "All" is the published one
    pub_ece = len(names) - 1 - names[::-1].index("ECE")
    cells = {r[0][0]: r for r in cifar}
    assert cells["MiSLAS (paper setting)"][pub_all][0] == "82.5"
    assert cells["MiSLAS (paper setting)"][pub_ece][0] == "3.66"
    assert cells["CE+mixup"][pub_all][0] == "72.8" and cells["CE+mixup"][pub_ece][0] == "2.14"
    assert cells["MiSLAS (best tuned)"][pub_all][0] == "—"
    assert "published" not in html.headers["comparison-fashion_mnist_lt-b100-resnet32"][0]


def test_status_counts_and_lists(trials, result):
    status = result.tables.status
    assert status.counts.loc["all", "total"] == len(trials)
    for s, n in trials["status"].value_counts().items():
        assert status.counts.loc["all", s] == n
    per = trials.groupby(["dataset", "status"]).size()
    for label, row in status.counts.drop(index="all").iterrows():
        dataset = label.split(",")[0]
        for s in ("complete", "stopped_early", "failed"):
            assert row[s] == per.get((dataset, s), 0)
    assert set(status.stopped["trial_id"]) == set(trials.loc[trials["status"] == "stopped_early", "trial_id"])
    assert set(status.failed["trial_id"]) == set(trials.loc[trials["status"] == "failed", "trial_id"])
    assert status.n_running == 2  # the fixture leaves two Optuna trials running
    html = parse_html((result.out_dir / "report.html").read_text())
    assert {r[0][0] for r in html.tables["stopped"]} == set(status.stopped["trial_id"])
    assert len(html.tables["running"]) == 2


def test_pareto_front_is_the_brute_force_front_of_complete_trials(trials, result):
    for key, g in _groups(result).items():
        sub = searched_mislas(trials, key[0])
        pts = list(zip(sub["trial_id"], sub["val_acc"], sub["val_ece"]))
        front = {t for t, a, e in pts
                 if not any((a2 >= a and e2 <= e) and (a2 > a or e2 < e) for _, a2, e2 in pts)}
        assert set(g.pareto.points.loc[g.pareto.points["on_front"], "trial_id"]) == front
        assert set(g.pareto.points["trial_id"]) == set(sub["trial_id"])  # no stopped-early trial


def test_heatmap_cells_are_means_over_trials(trials, result):
    g = _groups(result)[("cifar10_lt", 100.0, "resnet32")]
    done = searched_mislas(trials, "cifar10_lt")
    acc_map = next(h for h in g.heatmaps if h.metric == "val_acc")
    assert not acc_map.binned
    cells = done.groupby([done["eps_1"].round(6), done["eps_k"].round(6)])["val_acc"].agg(["mean", "count"])
    for (e1, ek), row in cells.iterrows():
        i, j = acc_map.eps_1_levels.index(f"{e1:g}"), acc_map.eps_k_levels.index(f"{ek:g}")
        assert math.isclose(acc_map.mean[i, j], row["mean"]) and acc_map.count[i, j] == row["count"]
    assert acc_map.count.sum() == len(done)
    binned = next(h for h in _groups(result)[("cifar100_lt", 50.0, "resnet32")].heatmaps if h.metric == "val_ece")
    n100 = len(searched_mislas(trials, "cifar100_lt"))
    assert binned.binned and binned.count.sum() == n100


def test_form_stats_and_curves(trials, result):
    for key, g in _groups(result).items():
        done = searched_mislas(trials, key[0])
        exp = done.groupby("form")["val_acc"].agg(["count", "mean", "max"])
        stats = g.forms.stats
        assert set(stats.index) == set(exp.index)
        for form, row in exp.iterrows():
            assert stats.loc[form, "n"] == row["count"]
            assert math.isclose(stats.loc[form, "val_acc_mean"], row["mean"])
            assert math.isclose(stats.loc[form, "val_acc_max"], row["max"])
        counts = pd.read_parquet(full_study() / "classes.parquet")
        first = counts[counts["trial_id"].isin(done["trial_id"])]
        k = first["class_index"].nunique()
        assert g.forms.counts.size == k and g.forms.counts[0] == first["count"].max()
        curves = g.forms.curves
        assert np.allclose(curves.groupby("curve")["epsilon"].max(), g.forms.eps_1)  # f(N_1) = ε_1
        assert np.allclose(curves.groupby("curve")["epsilon"].min(), g.forms.eps_k)  # f(N_K) = ε_K


def test_reliability_pooled_and_weight_norms(trials, result):
    rel = pd.read_parquet(full_study() / "reliability.parquet")
    classes = pd.read_parquet(full_study() / "classes.parquet")
    g = _groups(result)[("cifar10_lt", 100.0, "resnet32")]
    ids = set(trials[(trials["dataset"] == "cifar10_lt") & (trials["method"] == "crt") & trials["mixup"]
                     & (trials["shift_bn"] == True) & (trials["status"] == "complete")]["trial_id"])  # noqa: E712
    curve = next(c for c in g.reliability if c.label == "cRT+mixup")
    sub = rel[rel["trial_id"].isin(ids) & (rel["eval_split"] == "test")]
    n = sub.groupby("bin")["count"].sum()
    acc = (sub["accuracy"].fillna(0) * sub["count"]).groupby(sub["bin"]).sum() / n.replace(0, np.nan)
    conf = (sub["confidence"].fillna(0) * sub["count"]).groupby(sub["bin"]).sum() / n.replace(0, np.nan)
    assert curve.n_trials == len(ids) == 3
    assert (curve.bins["count"].to_numpy() == n.to_numpy()).all()
    assert np.allclose(curve.bins["accuracy"].to_numpy(float), acc.to_numpy(float), equal_nan=True)
    assert math.isclose(curve.ece, 100 * ((acc - conf).abs().fillna(0) * n).sum() / n.sum())
    assert len(curve.bins) == 15
    norms = dict((t, lines) for t, lines in g.norms)["cRT"]
    line = next(x for x in norms if x.label == "cRT+mixup")
    mean = classes[classes["trial_id"].isin(ids)].groupby("rank")["weight_norm"].mean()
    assert np.allclose(line.frame["weight_norm"].to_numpy(), mean.to_numpy())


def test_importances_use_complete_trials_only(trials, result):
    groups = _groups(result)
    for key, g in groups.items():
        n_done = len(searched_mislas(trials, key[0]))
        imp = g.importances
        if n_done >= 8:
            assert imp.table is not None and imp.n_trials == n_done
            assert set(imp.table.columns) == {"val_acc", "val_ece"}
            assert np.allclose(imp.table.sum(), 1.0)
            assert set(imp.table.index) <= {"eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target"}
        else:
            assert imp.table is None and "complete trials" in imp.note
    assert groups[("fashion_mnist_lt", 100.0, "resnet32")].importances.table is None  # too few complete
    assert groups[("cifar10_lt", 100.0, "resnet32")].importances.table is not None
