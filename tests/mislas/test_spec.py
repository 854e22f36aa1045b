"""mislas.spec: the shared names and rules, checked against hand-worked cases and plain loops."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mislas import config, las, metrics, spec, splits
from mislas.config import EvalConfig, paper_config
from mislas.spec import SplitRule, device_name, member_row_ids, related_function

REPO = Path(__file__).resolve().parents[2]


def _loop_splits(counts: list[int], many_above: int, few_below: int) -> dict[str, list[int]]:
    """Independent reference: the documented thresholds, one class at a time."""
    out: dict[str, list[int]] = {"many": [], "medium": [], "few": []}
    for j, c in enumerate(counts):
        out["many" if c > many_above else "few" if c < few_below else "medium"].append(j)
    return out


@pytest.mark.parametrize(("many_above", "few_below"), [(100, 20), (50, 10), (20, 21), (0, 0)])
def test_thresholds_match_a_plain_loop(many_above: int, few_below: int) -> None:
    counts = [500, 101, 100, 50, 21, 20, 19, 10, 1]
    got = SplitRule(many_above, few_below).classes(counts)
    assert {k: v.tolist() for k, v in got.items()} == _loop_splits(counts, many_above, few_below)


def test_index_ranges_sort_by_count_with_ties_in_index_order() -> None:
    counts = [10, 500, 10, 300, 50]  # by count: 1, 3, 4, then the tie 0, 2 in index order
    got = SplitRule(index_ranges=(2, 2)).classes(counts)
    assert {k: v.tolist() for k, v in got.items()} == {"many": [1, 3], "medium": [0, 4], "few": [2]}
    with pytest.raises(ValueError, match="sum to at most 5"):
        SplitRule(index_ranges=(3, 3)).classes(counts)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"few_below": 102}, "few_below <= many_above \\+ 1 must hold, got few_below=102, many_above=100"),
    ({"many_above": -1, "few_below": 0}, "many_above must be an integer >= 0, got -1"),
    ({"few_below": True}, "few_below must be an integer >= 0, got True"),
    ({"index_ranges": (3, -1)}, "index_ranges must be None or two integers >= 0"),
    ({"index_ranges": (3,)}, "index_ranges must be None or two integers >= 0"),
])
def test_bad_rules_fail_with_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SplitRule(**kwargs)  # type: ignore[arg-type]


def test_eval_config_builds_the_rule() -> None:
    assert EvalConfig().split_rule == SplitRule() == spec.DEFAULT_SPLIT_RULE
    assert paper_config("cifar100_lt").eval.split_rule == SplitRule(index_ranges=(36, 35))
    ev = EvalConfig(many_above=50, few_below=10)
    assert ev.split_rule == SplitRule(50, 10) and "split_rule" not in ev.__dataclass_fields__  # not recorded twice


def test_metrics_take_the_rule() -> None:
    counts = np.array([500, 50, 10])
    acc = np.array([90.0, 60.0, 30.0])
    assert metrics.split_accuracy(acc, counts) == {"many": 90.0, "medium": 60.0, "few": 30.0}
    # thresholds 40 / 5: classes 0 and 1 are Many, 2 is Medium, none Few
    assert metrics.split_accuracy(acc, counts, SplitRule(40, 5)) == {"many": 75.0, "medium": 30.0, "few": None}
    assert {k: v.tolist() for k, v in splits.class_splits(counts, SplitRule(40, 5)).items()} == {
        "many": [0, 1], "medium": [2], "few": []}
    with pytest.raises(TypeError, match="rule must be a mislas.spec.SplitRule"):
        splits.class_splits(counts, 100)  # type: ignore[arg-type]


def test_member_row_ids() -> None:
    assert member_row_ids("abc", 1) == ["abc"]
    assert member_row_ids("abc", 3) == ["abc-g0", "abc-g1", "abc-g2"]
    with pytest.raises(ValueError, match="n_members must be >= 1, got 0"):
        member_row_ids("abc", 0)


def test_device_name_of_the_cpu() -> None:
    import torch

    assert device_name(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def test_related_function_refuses_bad_form_and_p() -> None:
    with pytest.raises(ValueError, match="form must be one of concave, linear, convex, exp, got 'cubic'"):
        related_function([5, 1], 0.3, 0.0, "cubic")
    with pytest.raises(ValueError, match="p > 0 must hold for form='exp', got p=0"):
        related_function([5, 1], 0.3, 0.0, "exp", 0)
    assert related_function([5, 1], 0.3, 0.1, "exp", 2.0).tolist() == pytest.approx([0.3, 0.1])


def test_one_copy_of_each_name() -> None:
    assert las.FORMS is config.FORMS is spec.FORMS and las.TARGETS is config.TARGETS is spec.TARGETS
    assert config.METHODS is spec.METHODS and config.TRAINED_METHODS is spec.TRAINED_METHODS
    assert splits.SPLIT_NAMES is spec.SPLIT_NAMES and metrics.CONFIDENCE_QUANTILES is spec.CONFIDENCE_QUANTILES


def test_spec_imports_no_torch() -> None:
    code = ("import sys, mislas.spec; bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')); "
            "assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
