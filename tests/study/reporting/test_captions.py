"""Captions state the eval settings the runs recorded (config_json), not the defaults."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mislas.spec import SplitRule
from study.reporting import build_report
from study.reporting.compute import compute_tables
from study.reporting.load import load_study
from study.reporting.recorded import RecordedEval, recorded_eval
from tests.study.reporting.report_fixture import DEFAULT_GROUPS, make_study

SMALL = (DEFAULT_GROUPS[2],)  # fashion_mnist_lt, one seed, with component-ablation rows


@pytest.fixture(scope="module")
def study_at_10_bins(tmp_path_factory: pytest.TempPathFactory):
    """A union whose runs recorded eval.n_bins = 10 and thresholds 50 / 10 (not the defaults 15, 100 / 20)."""
    return make_study(tmp_path_factory.mktemp("bins10"), groups=SMALL, running=0, n_bins=10, many_above=50,
                      few_below=10)


def test_captions_read_n_bins_and_the_split_rule(study_at_10_bins, tmp_path) -> None:
    build_report(study_at_10_bins, tmp_path, ["md"])
    text = (tmp_path / "report.md").read_text()
    assert "15 bins" not in text and "15 equal-width" not in text and "> 100" not in text
    assert "(> 50, 10–50, < 10 training images)" in text  # the method comparison
    assert text.count("ECE (%, 10 bins)") == 2  # the method comparison and the component ablation
    assert "ECE (10 equal-width bins)" in text  # the calibration metrics
    assert "Reliability diagrams, 10 bins," in text
    assert "ECE with 10 bins" in text  # the paired bootstrap


def test_paired_bootstrap_uses_the_recorded_bins(study_at_10_bins) -> None:
    group = compute_tables(load_study(study_at_10_bins)).groups[0]
    assert group.recorded == RecordedEval((10,), (SplitRule(50, 10),))
    assert group.paired is not None and group.paired.n_bins == 10
    assert group.paired_components is not None and group.paired_components.n_bins == 10


def test_default_union_still_says_15_bins(tmp_path) -> None:
    study = make_study(tmp_path / "s", groups=SMALL, running=0)
    build_report(study, tmp_path / "o", ["md"])
    text = (tmp_path / "o" / "report.md").read_text()
    assert "(> 100, 20–100, < 20 training images)" in text and "ECE (%, 15 bins)" in text


def test_without_config_json_bins_come_from_the_reliability_rows(tmp_path) -> None:
    """A study older than config_json: the bin count of its reliability rows; the split rule unknown."""
    study = make_study(tmp_path / "s", groups=SMALL, running=0, legacy=True, n_bins=12)
    build_report(study, tmp_path / "o", ["md"])
    text = (tmp_path / "o" / "report.md").read_text()
    assert "ECE (%, 12 bins)" in text and "(split rule not recorded)" in text


def _trials(configs: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"trial_id": [f"t{i}" for i in range(len(configs))], "config_json": configs})


def test_recorded_eval_of_mixed_and_broken_configs() -> None:
    no_bins = pd.DataFrame(columns=["trial_id", "eval_split", "bin"])
    cfgs = [json.dumps({"eval": {"n_bins": 15, "many_above": 100, "few_below": 20, "index_ranges": [36, 35]}}),
            json.dumps({"eval": {"n_bins": 10, "many_above": 100, "few_below": 20, "index_ranges": None}}),
            "not json", None, json.dumps({"eval": {"n_bins": True, "few_below": 500}})]  # bool / bad rule: ignored
    got = recorded_eval(_trials(cfgs), no_bins, [f"t{i}" for i in range(5)])
    assert got == RecordedEval((10, 15), (SplitRule(), SplitRule(index_ranges=(36, 35))))
    assert got.bins_text() == "10 / 15 bins (the runs differ)" and got.bootstrap_bins(15) == 15
    assert got.splits_text() == ("> 100, 20–100, < 20 training images; the 36 / next 35 / other classes by "
                                 "training count (the runs differ)")
    only_t1 = recorded_eval(_trials(cfgs), no_bins, ["t1"])
    assert only_t1.bins_text() == "10 bins" and only_t1.bootstrap_bins(15) == 10
    assert recorded_eval(_trials([None]), no_bins, ["t0"]) == RecordedEval()
    assert RecordedEval().bins_text() == "bins" and RecordedEval().splits_text() == "split rule not recorded"


def test_module_doctests() -> None:
    import doctest

    from study.reporting import recorded

    result = doctest.testmod(recorded)
    assert result.attempted > 0 and result.failed == 0
