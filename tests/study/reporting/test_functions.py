"""The report's numpy related functions: one contract for all forms (endpoints, shape)."""

from __future__ import annotations

import numpy as np
import pytest

from study.reporting.functions import related_function

COUNTS = np.array([500, 300, 120, 60, 20, 5])
FORMS = [("concave", None), ("linear", None), ("convex", None), ("exp", 0.5), ("exp", 1.0), ("exp", 3.0)]


@pytest.mark.parametrize(("form", "p"), FORMS)
def test_endpoints_and_monotone(form, p):
    eps = related_function(COUNTS, 0.4, 0.1, form, p)
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.1)
    assert np.all(np.diff(eps) <= 1e-12)  # counts descend, so ε does too (ε_1 > ε_K)


def test_shapes_concave_above_linear_above_convex():
    concave, linear, convex = (related_function(COUNTS, 0.4, 0.1, f) for f in ("concave", "linear", "convex"))
    inner = slice(1, -1)
    assert np.all(concave[inner] > linear[inner]) and np.all(linear[inner] > convex[inner])
    assert np.allclose(related_function(COUNTS, 0.4, 0.1, "exp", 1.0), linear)


def test_hand_worked_value():
    # x = (300 - 5) / (500 - 5) = 0.5960; concave: 0.1 + 0.3 * sin(pi/2 * x) = 0.3424
    assert related_function(COUNTS, 0.4, 0.1, "concave")[1] == pytest.approx(0.1 + 0.3 * np.sin(np.pi / 2 * 295 / 495))


def test_balanced_counts_and_bad_input():
    assert np.allclose(related_function(np.array([7, 7]), 0.2, 0.0, "concave"), 0.2)
    with pytest.raises(ValueError, match="p > 0 must hold"):
        related_function(COUNTS, 0.4, 0.1, "exp", None)
    with pytest.raises(ValueError, match="form must be one of"):
        related_function(COUNTS, 0.4, 0.1, "cubic")


def test_optuna_parameter_names_map_to_columns():
    from study.reporting.importance import column_name

    assert column_name("eps_1") == "eps_1"
    assert column_name("las/eps_k") == "eps_k" and column_name("stage2.dw_ratio") == "dw_ratio"


def test_optuna_studies_are_found_per_data_set():
    import optuna
    import pandas as pd

    from study.reporting.importance import studies_for
    from study.reporting.load import OptunaInfo

    a, b = optuna.create_study(study_name="s:cifar10_lt"), optuna.create_study(study_name="s:places_lt")
    info = OptunaInfo({"s:cifar10_lt": a, "s:places_lt": b}, "")
    named = pd.DataFrame({"optuna_study": ["s:places_lt", None]})
    assert studies_for(named, info, "s", "cifar10_lt") == [b]  # the rows say which study
    assert studies_for(pd.DataFrame({"x": [1]}), info, "s", "cifar10_lt") == [a]  # NAME:dataset
    assert studies_for(pd.DataFrame({"x": [1]}), info, "s", "inat2018") == []


def test_heatmap_levels_of_one_value_or_a_narrow_range_are_distinct() -> None:
    """One complete trial off the step grid, or ε values closer than 3 significant digits, still bin."""
    import pandas as pd

    from study.reporting.ablations import _levels

    labels, order, binned = _levels(pd.Series([0.0113]))
    assert list(labels) == ["0.0113"] and order == ("0.0113",) and not binned
    narrow = pd.Series([0.30001, 0.30002, 0.30003, 0.30004, 0.30005, 0.300061, 0.300072])
    labels, order, binned = _levels(narrow)
    assert binned and len(set(order)) == len(order) and set(labels) <= set(order)


def test_one_copy_of_the_shared_names():
    """The report's related function and forms are the library's (mislas.spec), not copies."""
    from mislas import config, las, spec
    from study.reporting import common

    assert related_function is spec.related_function
    assert common.FORMS is spec.FORMS is las.FORMS is config.FORMS
    assert config.TRAINED_METHODS is spec.TRAINED_METHODS and config.METHODS is spec.METHODS


@pytest.mark.parametrize(("form", "p"), FORMS)
def test_library_tensor_is_the_shared_function_in_float32(form, p):
    """mislas.las.related_function checks its input, then casts the shared float64 values to float32."""
    from mislas.las import related_function as library

    ours = related_function(COUNTS, 0.4, 0.1, form, p)
    theirs = library(COUNTS, 0.4, 0.1, form=form, p=p)
    assert str(theirs.dtype) == "torch.float32"
    assert np.array_equal(theirs.numpy(), ours.astype(np.float32))
