"""Divergence is a status: a member whose train loss or NLL is non-finite or above
DIVERGENCE_NATS x ln(C) is ``diverged`` (not complete), counted apart in the report's trial
table and kept out of its tables; a temperature on the fit's bound is flagged."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pandas as pd
import pytest

from study import schema
from study.outcome import MemberOutcome, at_bound, divergence, status_of, trial_row
from study.records import TrialSpec
from study.reporting.common import complete_trials
from study.reporting.load import OptunaInfo
from study.reporting.status import status_summary


def test_the_bound_is_ten_nats_times_ln_c() -> None:
    bound = schema.DIVERGENCE_NATS * math.log(10)  # 23.03 nats for 10 classes
    assert divergence(10, nll={"val": bound - 1e-9, "test": 1.2}, train_losses=[bound - 1e-9, 0.5]) is None
    assert divergence(10, nll={"val": None, "test": None}, train_losses=[None]) is None  # undefined: no verdict
    why = divergence(10, nll={"val": 1e27, "test": 0.3}, train_losses=[0.5])
    assert why == "val NLL 1e+27 is above the bound 23 nats (10 x ln 10)"
    assert divergence(10, nll={"val": 1.0}, train_losses=[0.5, 3e25]) == (
        "epoch 2 train loss 3e+25 is above the bound 23 nats (10 x ln 10)")
    assert divergence(1000, nll={"val": 60.0}, train_losses=[]) is None  # 10 x ln 1000 = 69 nats
    assert divergence(10, nll={"test": float("inf")}, train_losses=[]) == "test NLL is inf"
    assert divergence(10, nll={}, train_losses=[float("nan")]) == "epoch 1 train loss is nan"


@pytest.mark.parametrize(("t", "flag"), [(100.0, True), (1e-2, True), (99.9, False), (1.5, False), (0.0101, False),
                                         (None, None), (float("nan"), None)])
def test_temperature_at_bound(t: float | None, flag: bool | None) -> None:
    assert at_bound(t) is flag


def row_of(outcome: MemberOutcome) -> dict:
    spec = TrialSpec(dataset="places_lt", method="crt", mixup=False, seed=0)
    return trial_row(spec, 0, outcome.trial_id, outcome.trial_id, outcome, last={}, study="s", budget="smoke",
                     imb_factor=None, epochs_planned=2, error=None, fallback_versions={}, fallback_commit=None,
                     now=datetime.now(timezone.utc))


def test_a_finished_member_above_the_bound_is_diverged_not_complete() -> None:
    base = MemberOutcome(trial_id="a", started_at="2026-12-06T20:00:00+00:00", epochs_planned=2, epochs_run=2,
                         final=True, val={"nll": 1e27}, temperature=100.0)
    diverged = MemberOutcome(**{**base.__dict__, "trial_id": "b", "diverged": True,
                                "error": "diverged: val NLL 1e+27 is above the bound 23 nats (10 x ln 10)"})
    assert status_of(base, error=None) == schema.COMPLETE
    assert status_of(diverged, error=None) == schema.DIVERGED
    row = row_of(diverged)
    assert row["status"] == "diverged" and row["error"].startswith("diverged: val NLL 1e+27")
    assert row["temperature_at_bound"] is True and row_of(base)["temperature_at_bound"] is True
    assert schema.DIVERGED in schema.STATUSES and "temperature_at_bound" in schema.columns("trials")


def test_the_report_counts_diverged_rows_apart_and_keeps_them_out() -> None:
    trials = pd.DataFrame([
        {"trial_id": "c1", "status": "complete", "temperature": 1.4, "temperature_at_bound": False},
        {"trial_id": "c2", "status": "complete", "temperature": 100.0, "temperature_at_bound": True},
        {"trial_id": "c3", "status": "complete", "temperature": None, "temperature_at_bound": None},
        {"trial_id": "d1", "status": "diverged", "temperature": 100.0, "temperature_at_bound": True},
        {"trial_id": "f1", "status": "failed", "temperature": None, "temperature_at_bound": None},
    ]).assign(dataset="cifar10_lt", imb_factor=100.0, arch="resnet32", method="mislas", mixup=True, seed=0,
              variant=None, epochs_run=2, epochs_planned=2, val_acc=50.0, val_ece=5.0, error=None)
    status = status_summary(trials, OptunaInfo(studies={}, note=""))
    assert status.counts.loc["all", "diverged"] == 1 and status.counts.loc["all", "complete"] == 3
    assert status.counts.loc["all", "total"] == 5
    assert sorted(status.failed["trial_id"]) == ["d1", "f1"] and status.other.empty
    assert (status.temperature_at_bound, status.with_temperature) == (1, 2)  # complete rows only
    assert list(complete_trials(trials)["trial_id"]) == ["c1", "c2", "c3"]
