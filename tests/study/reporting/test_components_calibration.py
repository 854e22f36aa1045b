"""The component ablation, temperature scaling, BN-mode rows, calibration metrics and the
confidence plot, each number against an independent pandas aggregation of the Parquet; and
that ablation rows never reach the searched-settings analyses."""

from __future__ import annotations

import base64
import math
import random

import numpy as np
import pandas as pd
import pytest

from study.reporting import FORMATS, build_report
from study.reporting.components import parse_variant
from tests.study.reporting.expected import expected_trials, over_seeds, searched_mislas
from tests.study.reporting.report_fixture import (
    DEFAULT_GROUPS,
    distinct_colours,
    full_report,
    full_study,
    make_study,
    parse_html,
)

TEST = {"Many": "test_acc_many", "Medium": "test_acc_medium", "Few": "test_acc_few", "All": "test_acc",
        "ECE": "test_ece", "NLL": "test_nll"}
DECIMALS = {"NLL": 3, "Brier": 3}
CALIBRATION = {"ECE": "test_ece", "classwise ECE": "test_classwise_ece", "adaptive ECE": "test_adaptive_ece",
               "Brier": "test_brier", "ECE Many": "test_ece_many", "ECE Medium": "test_ece_medium",
               "ECE Few": "test_ece_few"}
CALIBRATION_TS = {"ECE": "test_ece_ts", "classwise ECE": "test_classwise_ece_ts",
                  "adaptive ECE": "test_adaptive_ece_ts", "Brier": "test_brier_ts"}
# The fixed order of the ablation rows (all on first, plain+ce last), written out by hand.
ORDER_CIFAR10 = ["mixup+shift_bn+las", "plain+shift_bn+las", "mixup+las", "mixup+shift_bn+ce",
                 "mixup+shift_bn+uniform_ls", "plain+las", "plain+shift_bn+ce", "mixup+ce", "plain+ce"]
ORDER_FMNIST = ["mixup+shift_bn+las", "plain+shift_bn+las", "mixup+las", "mixup+shift_bn+ce", "plain+las",
                "plain+shift_bn+ce", "mixup+ce", "mixup+uniform_ls", "plain+ce"]
FLAGS = {  # variant -> (Stage-1 mixup, shift BN, LAS) cells
    "mixup+shift_bn+las": ("✓", "✓", "✓"), "plain+shift_bn+las": ("✗", "✓", "✓"), "mixup+las": ("✓", "✗", "✓"),
    "mixup+shift_bn+ce": ("✓", "✓", "✗"), "mixup+shift_bn+uniform_ls": ("✓", "✓", "uniform"),
    "plain+las": ("✗", "✗", "✓"), "plain+shift_bn+ce": ("✗", "✓", "✗"), "mixup+ce": ("✓", "✗", "✗"),
    "mixup+uniform_ls": ("✓", "✗", "uniform"), "plain+ce": ("✗", "✗", "✗"),
}
SMALL = (DEFAULT_GROUPS[2],)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _fmt(mean: float, std: float, count: int, decimals: int) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if count > 1 else f"{mean:.{decimals}f}"


@pytest.fixture(scope="module")
def trials() -> pd.DataFrame:
    return pd.read_parquet(full_study() / "trials.parquet")


@pytest.fixture(scope="module")
def result():
    return full_report()


@pytest.fixture(scope="module")
def html(result):
    return parse_html((result.out_dir / "report.html").read_text())


def _groups(result) -> dict[str, object]:
    return {g.group.dataset: g for g in result.tables.groups}


# --- component ablation ------------------------------------------------------------------------

def test_component_table_numbers_order_and_flags(trials, result, html):
    variants = trials[trials["variant"].notna()]
    assert set(variants["dataset"]) == {"cifar10_lt", "fashion_mnist_lt"}
    orders = {"cifar10_lt": ORDER_CIFAR10, "fashion_mnist_lt": ORDER_FMNIST}
    for dataset, g in _groups(result).items():
        if dataset not in orders:
            assert g.components is None
            continue
        rows = variants[variants["dataset"] == dataset]
        done = rows[rows["status"] == "complete"]
        table = html.tables[f"components-{g.group.slug}"]
        header = html.headers[f"components-{g.group.slug}"][-1]
        assert [r[0][0] for r in table] == orders[dataset] == [v.name for v in g.components.variants]
        assert g.components.n_incomplete == len(rows) - len(done)
        exp = pd.DataFrame({v: over_seeds(sub, {m: c for m, c in TEST.items()})
                            for v, sub in done.groupby("variant")}).T
        for r in table:
            name = r[0][0]
            assert tuple(c for c, _ in r[1:4]) == FLAGS[name]
            assert r[header.index("seeds")][0] == str(int(exp.loc[name, ("All", "count")]))
            for metric in TEST:
                mean, std = exp.loc[name, (metric, "mean")], exp.loc[name, (metric, "std")]
                count = int(exp.loc[name, (metric, "count")])
                stats = g.components.stats.loc[name]
                assert _same(stats[f"{metric}_mean"], mean), (dataset, name, metric)
                assert _same(stats[f"{metric}_std"], std if count > 1 else math.nan), (dataset, name, metric)
                assert r[header.index(metric)][0] == _fmt(mean, std, count, DECIMALS.get(metric, 2))
        for metric in TEST:  # bold: the best mean per column
            means = exp[(metric, "mean")].astype(float).dropna()
            target = means.min() if metric in ("ECE", "NLL") else means.max()
            best = set(means.index[np.isclose(means, target, rtol=0, atol=1e-12)])
            assert {r[0][0] for r in table if r[header.index(metric)][1]} == best, (dataset, metric)
    # one seed: no "±"; the failed plain+las run is left out (2 of 3 seeds)
    fm = html.tables["components-fashion_mnist_lt-b100-resnet32"]
    assert not any(" ± " in c for r in fm for c, _ in r)
    c10 = {r[0][0]: r for r in html.tables["components-cifar10_lt-b100-resnet32"]}
    assert c10["plain+las"][4][0] == "2" and c10["plain+ce"][4][0] == "3"


def test_component_table_in_markdown_and_latex(result):
    md = (result.out_dir / "report.md").read_text()
    tex = (result.out_dir / "tables.tex").read_text()
    assert "## 2. Component ablation" in md
    assert "| mixup+shift_bn+las | ✓ | ✓ | ✓ |" in md and "| plain+ce | ✗ | ✗ | ✗ |" in md
    assert "| mixup+shift_bn+uniform_ls | ✓ | ✓ | uniform |" in md
    assert "No component-ablation rows for this group." in md  # cifar100_lt ran none
    section = tex.split("\\label{tab:components-cifar10_lt-b100-resnet32}")[1].split("\\end{table}")[0]
    assert section.count("$\\checkmark$") > 0 and "plain+ce" in section and "✓" not in tex and "✗" not in tex
    assert "amssymb" in tex.splitlines()[0]


def test_variant_parsing_and_order():
    shuffled = ORDER_CIFAR10[:] + ["mixup+shift_bn+warp"]
    random.Random(0).shuffle(shuffled)
    ordered = [v.name for v in sorted((parse_variant(n) for n in shuffled), key=lambda v: v.sort_key())]
    assert ordered == [*ORDER_CIFAR10, "mixup+shift_bn+warp"]  # a name it cannot read goes last
    v = parse_variant("plain+shift_bn+uniform_ls")
    assert (v.mixup, v.shift_bn, v.las, v.n_off) == (False, True, "uniform_ls", 2)
    rows = pd.DataFrame({"mixup": [True], "shift_bn": [False], "eps_1": [0.3], "eps_k": [0.3]})
    odd = parse_variant("custom", rows)  # nothing in the name: read from the row
    assert (odd.mixup, odd.shift_bn, odd.las) == (True, False, "uniform_ls")


# --- ablation rows stay out of the searched-settings analyses ---------------------------------------

def test_ablation_rows_never_enter_the_comparison_or_searched_analyses(trials, result, html):
    variant_ids = set(trials.loc[trials["variant"].notna(), "trial_id"])
    assert variant_ids
    for dataset, g in _groups(result).items():
        mine = trials[trials["dataset"] == dataset]
        searched = searched_mislas(trials, dataset)
        if mine["variant"].notna().any():  # the fixture makes a leak visible: variants beat every setting
            assert mine.loc[mine["variant"].notna(), "val_acc"].max() > searched["val_acc"].max()
        for label, ids in g.comparison.trial_ids.items():
            assert not set(ids) & variant_ids, (dataset, label)
        assert not set(g.pareto.points["trial_id"]) & variant_ids
        assert not set(g.history["trial_id"]) & variant_ids
        assert sum(int(h.count.sum()) for h in g.heatmaps if h.metric == "val_acc") == len(searched)
        assert int(g.forms.stats["n"].sum()) == len(searched) == g.n_mislas_complete
        if g.importances.table is not None:
            assert g.importances.n_trials == len(searched)
        pareto = html.tables[f"pareto-{g.group.slug}"]
        assert not {r[0][0] for r in pareto} & variant_ids
    text = (result.out_dir / "report.html").read_text()
    stopped = html.tables.get("stopped", []) + html.tables.get("failed", [])
    listed = {r[0][0] for r in stopped}
    assert listed & variant_ids  # the failed ablation run is listed under failed trials, nothing else
    assert "MiSLAS (best tuned) = " in text


# --- temperature scaling and BN modes in the method comparison -----------------------------------

def test_ts_rows_hold_the_temperature_and_scaled_metrics(trials, result, html):
    for key, by_label in expected_trials(trials, ts=True).items():
        g = _groups(result)[key[0]]
        stats = g.comparison.stats
        table = {r[0][0]: r for r in html.tables[f"comparison-{g.group.slug}"]}
        header = html.headers[f"comparison-{g.group.slug}"][-1]
        j = header.index("T")
        for label, rows in by_label.items():
            if "+TS" not in label:
                assert math.isnan(stats.loc[label, "T_mean"]) and table[label][j][0] == "—"
                continue
            base = by_label[label.replace("+TS", "", 1)]
            assert set(rows["trial_id"]) == set(base["trial_id"])  # every fixture trial has TS values
            t = over_seeds(rows, {"T": "temperature"})
            count = int(t[("T", "count")])
            assert _same(stats.loc[label, "T_mean"], t[("T", "mean")])
            assert table[label][j][0] == _fmt(t[("T", "mean")], t[("T", "std")], count, 2)
            for metric in ("Many", "Medium", "Few", "All"):  # accuracy: the same as the base row
                assert table[label][header.index(metric)][0] == table[label.replace("+TS", "", 1)][header.index(metric)][0]
                assert not table[label][header.index(metric)][1]  # and never bold
            assert not stats.loc[label, "published_source"]
        labels = list(stats.index)
        for label in labels:  # each "+TS" row right after its row
            if "+TS" in label:
                assert labels[labels.index(label) - 1] == label.replace("+TS", "", 1)


def test_bn_eval_baselines_are_separate_rows(trials, result):
    g = _groups(result)["cifar10_lt"]
    done = trials[(trials["dataset"] == "cifar10_lt") & (trials["status"] == "complete")]
    for method, name in (("crt", "cRT"), ("lws", "LWS")):
        for mixup, suffix in ((False, ""), (True, "+mixup")):
            rows = done[(done["method"] == method) & (done["mixup"] == mixup)]
            train = set(rows.loc[rows["shift_bn"] == True, "trial_id"])  # noqa: E712
            evaluated = set(rows.loc[rows["shift_bn"] == False, "trial_id"])  # noqa: E712
            assert train and evaluated
            assert set(g.comparison.trial_ids[f"{name}{suffix}"]) == train
            assert set(g.comparison.trial_ids[f"{name}{suffix} (BN eval)"]) == evaluated
            assert set(g.comparison.trial_ids[f"{name}{suffix}+TS (BN eval)"]) == evaluated
            assert not g.comparison.stats.loc[f"{name}{suffix} (BN eval)", "published_source"]
    for dataset, other in _groups(result).items():
        if dataset != "cifar10_lt":
            assert not any("BN eval" in label for label in other.comparison.stats.index)
    table = next(t for t in result.document.tables if t.key == "comparison-cifar10_lt-b100-resnet32")
    assert "(BN eval): cRT / LWS" in table.note
    norms = dict(g.norms)["cRT"]
    assert [line.label for line in norms] == ["cRT", "cRT (BN eval)", "cRT+mixup", "cRT+mixup (BN eval)"]


# --- calibration metrics and confidence boxes ----------------------------------------------------

def test_calibration_metrics_numbers(trials, result, html):
    for key, by_label in expected_trials(trials, ts=True).items():
        g = _groups(result)[key[0]]
        table = {r[0][0]: r for r in html.tables[f"calibration-metrics-{g.group.slug}"]}
        header = html.headers[f"calibration-metrics-{g.group.slug}"][-1]
        assert set(table) == set(by_label)
        means = {}
        for label, rows in by_label.items():
            source = CALIBRATION_TS if "+TS" in label else CALIBRATION
            per_seed = rows.groupby("seed")[list(source.values())].mean()
            for metric in CALIBRATION:
                mean = float(per_seed[source[metric]].mean()) if metric in source else math.nan
                means[(label, metric)] = mean
                assert _same(g.calibration.stats.loc[label, f"{metric}_mean"], mean), (key, label, metric)
                expected = "—" if math.isnan(mean) else f"{mean:.{DECIMALS.get(metric, 2)}f}"
                assert table[label][header.index(metric)][0] == expected, (key, label, metric)
            assert table[label][1][0] == str(rows["seed"].nunique())
        for metric in CALIBRATION:  # bold: the lowest mean of every row
            column = pd.Series({lb: means[(lb, metric)] for lb in by_label}).dropna()
            best = set(column.index[np.isclose(column, column.min(), rtol=0, atol=1e-12)])
            assert {lb for lb, r in table.items() if r[header.index(metric)][1]} == best, (key, metric)


def test_confidence_boxes_pool_the_rows_trials(trials, result):
    conf = pd.read_parquet(full_study() / "confidence.parquet")
    for key, by_label in expected_trials(trials).items():
        g = _groups(result)[key[0]]
        wanted = [lb for lb in g.comparison.stats.index if "+TS" not in lb and lb != "MiSLAS (best tuned)"]
        assert [b.label for b in g.confidence] == wanted
        for boxes in g.confidence:
            ids = set(by_label[boxes.label]["trial_id"])
            rows = conf[conf["trial_id"].isin(ids) & (conf["eval_split"] == "test")]
            assert boxes.n_trials == len(ids) == rows["trial_id"].nunique()
            for split, sub in rows.groupby("class_split"):
                w = sub["count"] / sub["count"].sum()
                for stat in ("mean", "q05", "q25", "q50", "q75", "q95"):
                    assert math.isclose(boxes.stats.loc[split, stat], float((sub[stat] * w).sum())), (boxes.label, stat)
                assert boxes.stats.loc[split, "count"] == sub["count"].sum()
                acc = by_label[boxes.label].groupby("seed")[f"test_acc_{split}"].mean().mean()
                assert math.isclose(boxes.accuracy[split], acc)
            assert list(boxes.stats.index) == [s for s in ("many", "medium", "few") if s in set(rows["class_split"])]
            (first, *_) = boxes.bxp_stats()
            row = boxes.stats.iloc[0]
            assert (first["med"], first["q1"], first["q3"], first["whislo"], first["whishi"], first["mean"]) == (
                row["q50"], row["q25"], row["q75"], row["q05"], row["q95"], row["mean"])


def test_confidence_figure_in_every_output(result, html):
    text = (result.out_dir / "report.html").read_text()
    md = (result.out_dir / "report.md").read_text()
    for g in result.tables.groups:
        art = next(a for a in result.document.figures if a.name == f"{g.group.slug}-confidence")
        assert "5th and 95th percentiles" in art.caption
        assert base64.b64encode(art.png).decode("ascii") in text
        assert f"](figures/{art.name}.png)" in md
        assert distinct_colours(art.png) > 8
    assert text.count("whiskers = the 5th and 95th percentiles") >= 2 * len(result.tables.groups)  # alt + caption
    assert any(k.startswith("calibration-metrics-") for k in html.tables)


# --- older studies ------------------------------------------------------------------------------

def test_older_study_without_the_new_columns_and_tables_renders(tmp_path):
    study = make_study(tmp_path, groups=(DEFAULT_GROUPS[0],), running=0, legacy=True)
    assert not (study / "confidence.parquet").exists()
    old = pd.read_parquet(study / "trials.parquet")
    assert "variant" not in old.columns and "temperature" not in old.columns and "test_brier" not in old.columns
    assert "steps" not in pd.read_parquet(study / "epochs.parquet").columns
    result = build_report(study, tmp_path / "out", FORMATS)
    text = (tmp_path / "out" / "report.html").read_text()
    notes = " ".join(result.tables.notes)
    assert "confidence.parquet not found" in notes and "steps" in notes
    assert "variant" in notes and "test_ece_ts" in notes
    (g,) = result.tables.groups
    assert not g.comparison.has_ts and not any("+TS" in lb for lb in g.comparison.stats.index)
    assert g.components is None and not g.confidence and g.calibration.empty
    assert "No component-ablation rows (trials.parquet `variant`) in this study" in text
    assert "a study older than these columns" in text and "No confidence distribution" in text
    header = parse_html(text).headers[f"comparison-{g.group.slug}"][-1]
    assert "T" not in header
    assert not any(a.name.endswith("-confidence") for a in result.document.figures)
    # the old comparison: baselines with null shift_bn keep their default label, no BN-eval row
    assert "cRT+mixup" in g.comparison.stats.index and not any("BN eval" in lb for lb in g.comparison.stats.index)


def test_study_without_confidence_table_only(tmp_path):
    study = make_study(tmp_path, groups=SMALL, running=0, drop=("confidence.parquet",))
    result = build_report(study, tmp_path / "out", ["html"])
    (g,) = result.tables.groups
    assert not g.confidence and not g.calibration.empty and g.comparison.has_ts and g.components is not None
    assert "confidence.parquet not found" in (tmp_path / "out" / "report.html").read_text()
